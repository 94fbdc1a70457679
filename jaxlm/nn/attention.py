"""Multi-head attention: softmax(Q K^T / sqrt(d_k) + bias, masked) V.

Self- and cross-attention, multi-head (G = H), multi-query (G = 1) and grouped-query (1 < G < H)
attention share one code path: queries are grouped as [B, T, G, h, K] with h = H / G query heads per
key/value head.

A note on the formula: one of the articles this project follows writes attention as
``exp(QK^T/sqrt(d)) / (K^T K^T + eps) V``. That is not a normalised attention: its rows do not sum to one,
so it is not a weighted average of the values. We implement the standard form of Vaswani et al. (2017),
``softmax(QK^T / sqrt(d_k)) V``, whose rows sum to one (notebooks/01_attention.py shows both numerically).

Implementations (``cfg.attn_impl``), tested equal:
- ``"reference"``: einsum + float32 softmax; supports attention-probability dropout and returning weights;
- ``"xla"`` / ``"cudnn"``: :func:`jax.nn.dot_product_attention` with that backend (cudnn needs a GPU);
- ``"flash"``: :func:`jaxlm.nn.flash.attention`, query-blocked with its own VJP that saves no T x S
  probabilities for the backward pass (recomputes them from the row log-sum-exp).
  These do not implement dropout on probabilities or return weights; when either is asked for, the
  reference path runs instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.nn import flash, linear, positions

IMPLS = ("reference", "xla", "cudnn", "flash")
_NEG = -1e30  # finite, so fully-masked rows give a uniform (not NaN) distribution


def spec(cfg, *, cross: bool = False) -> dict:
    """q: [D, H, K], k/v: [D, G, K], o: [H, K, D] (+ biases when ``cfg.use_bias``)."""
    D, H, G, K = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    out_scale = (2 * cfg.n_layers) ** -0.5 if getattr(cfg, "scale_residual_init", False) else 1.0
    return {
        "q": linear.spec(cfg, (D,), (H, K), ("embed",), ("heads", "head_dim")),
        "k": linear.spec(cfg, (D,), (G, K), ("embed",), ("kv_heads", "head_dim")),
        "v": linear.spec(cfg, (D,), (G, K), ("embed",), ("kv_heads", "head_dim")),
        "o": linear.spec(cfg, (H, K), (D,), ("heads", "head_dim"), ("embed",), scale=out_scale),
    }


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    impl: str = "reference",
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
    return_weights: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """Scaled dot-product attention over grouped heads.

    q: [B, T, H, K]; k, v: [B, S, G, K] with H % G == 0; mask: bool broadcastable to [B, H, T, S]
    (True = attend); bias: float broadcastable to [B, H, T, S]. Returns (out [B, T, H, K],
    weights [B, H, T, S] or None).
    """
    B, T, H, K = q.shape
    S, G = k.shape[1], k.shape[2]
    if H % G:
        raise ValueError(f"{H} query heads cannot be grouped over {G} key/value heads.")
    use_dropout = dropout_rate > 0.0 and key is not None
    if impl in ("xla", "cudnn") and not use_dropout and not return_weights:
        out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=impl)
        return out, None
    if impl == "flash" and not use_dropout and not return_weights:
        return flash.attention(q, k, v, mask=mask, bias=bias), None
    if impl not in IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose one of {IMPLS}.")
    h = H // G
    qg = q.reshape(B, T, G, h, K)
    logits = jnp.einsum("BTGhK,BSGK->BGhTS", qg, k).astype(jnp.float32) * (K**-0.5)
    if bias is not None:
        logits = logits + _group(bias.astype(jnp.float32), G, h)
    if mask is not None:
        logits = jnp.where(_group(mask, G, h), logits, _NEG)
    probs = jax.nn.softmax(logits, axis=-1)  # [B, G, h, T, S]
    weights = probs.reshape(probs.shape[0], H, T, S) if return_weights else None
    probs = probs.astype(q.dtype)
    if use_dropout:
        keep = jax.random.bernoulli(key, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0).astype(q.dtype)
    out = jnp.einsum("BGhTS,BSGK->BTGhK", probs, v).reshape(B, T, H, K)
    return out, weights


def _group(x: jax.Array, G: int, h: int) -> jax.Array:
    """[B|1, H|1, T, S] -> [B|1, G|1, h|1, T, S] to match grouped logits."""
    b, n, t, s = x.shape
    if n == 1:
        return x[:, :, None]
    return x.reshape(b, G, h, t, s)


def project_kv(p: dict, x: jax.Array, cfg, positions_: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Keys and values for ``x`` [B, S, D] -> ([B, S, G, K], [B, S, G, K]); RoPE applied to keys when
    ``cfg.pos_emb == "rope"`` (``positions_`` [B, S])."""
    dt = jnp.dtype(cfg.dtype)
    k = linear.apply(p["k"], x, "BSD,DGK->BSGK", dt)
    v = linear.apply(p["v"], x, "BSD,DGK->BSGK", dt)
    if cfg.pos_emb == "rope" and positions_ is not None:
        k = positions.apply_rope(k, positions_, cfg.rope_theta)
    return k, v


def apply(
    p: dict,
    x: jax.Array,
    cfg,
    *,
    kv: jax.Array | None = None,
    mask: jax.Array | None = None,
    positions_: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    cache: dict | None = None,
    cache_index: jax.Array | int | None = None,
    key: jax.Array | None = None,
    return_weights: bool = False,
    impl: str | None = None,
) -> tuple[jax.Array, dict]:
    """Attention of ``x`` [B, T, D] over itself (self) or over ``kv`` [B, S, D] (cross).

    ``positions_`` [B, T] feed RoPE/ALiBi (``kv_positions`` [B, S] for the keys; default = the same).
    KV cache: with ``cache={"k","v": [B, S_max, G, K]}`` and an integer ``cache_index``, this step's keys and
    values are written at ``[cache_index, cache_index + T)`` and attention runs over the whole cache
    (``mask`` must then cover S_max). With ``cache`` and ``cache_index=None`` the cache is used as
    precomputed keys/values (cross-attention during decoding). Returns (out [B, T, D], aux) where aux has
    ``"cache"`` when a cache was given and ``"weights"`` [B, H, T, S] when asked.
    """
    dt = jnp.dtype(cfg.dtype)
    B, T, _ = x.shape
    q = linear.apply(p["q"], x, "BTD,DHK->BTHK", dt)
    if positions_ is None and cfg.pos_emb in ("rope", "alibi"):
        positions_ = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    if cfg.pos_emb == "rope":
        q = positions.apply_rope(q, positions_, cfg.rope_theta)
    aux: dict = {}
    if cache is not None and cache_index is None:
        k, v = cache["k"], cache["v"]
        aux["cache"] = cache
    else:
        src = x if kv is None else kv
        kvpos = positions_ if (kv is None and kv_positions is None) else kv_positions
        if kvpos is None and cfg.pos_emb in ("rope", "alibi"):
            kvpos = jnp.broadcast_to(jnp.arange(src.shape[1])[None], src.shape[:2])
        k, v = project_kv(p, src, cfg, kvpos if kv is None else None)
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), cache_index, axis=1)
            aux["cache"] = {"k": k, "v": v}
            k, v = k.astype(dt), v.astype(dt)
    bias = None
    # ALiBi is a self-attention bias; a precomputed cache with no cache_index is cross-attention: no bias
    if cfg.pos_emb == "alibi" and kv is None and not (cache is not None and cache_index is None):
        if kv_positions is not None:
            kp = kv_positions
        elif cache is None:
            kp = positions_
        else:
            # distances must be between positions, not cache slots: with left padding a row's slots run
            # ahead of its positions by its pad length. The step's last token is a real one (padding is on
            # the left), so slot s holds position s - (its slot - its position).
            offset = cache_index + T - 1 - positions_[:, -1:]  # [B, 1]
            kp = jnp.arange(k.shape[1])[None] - offset  # [B, S]
        bias = positions.alibi_bias(cfg.n_heads, positions_, kp)
    rate = cfg.attn_dropout if key is not None else 0.0
    out, w = dot_product_attention(
        q, k, v, mask=mask, bias=bias, impl=impl or cfg.attn_impl, dropout_rate=rate, key=key,
        return_weights=return_weights,
    )
    if return_weights:
        aux["weights"] = w
    y = linear.apply(p["o"], out, "BTHK,HKD->BTD", dt)
    return y, aux
