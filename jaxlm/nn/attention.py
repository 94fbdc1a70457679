"""Multi-head attention: softmax(Q K^T / sqrt(d_k) + bias, masked) V.

Self- and cross-attention, multi-head (G = H), multi-query (G = 1) and grouped-query (1 < G < H)
attention share one code path: queries are grouped as [B, T, G, h, K] with h = H / G query heads per
key/value head.

A note on the formula: one of the articles this project follows writes attention as
``exp(QK^T/sqrt(d)) / (K^T K^T + eps) V``. That is not a normalised attention: its rows do not sum to one,
so it is not a weighted average of the values. We implement the standard form of Vaswani et al. (2017),
``softmax(QK^T / sqrt(d_k)) V``, whose rows sum to one (notebooks/01_attention.py shows both numerically).

Implementations (``AttentionConfig.impl``), tested equal:
- ``"reference"``: einsum + float32 softmax (:func:`softmax_attention`); supports attention-probability
  dropout and returning weights;
- ``"xla"`` / ``"cudnn"``: :func:`jax.nn.dot_product_attention` with that backend (cudnn needs a GPU);
- ``"flash"``: :func:`jaxlm.nn.flash.attention`, query-blocked with its own VJP that saves no T x S
  probabilities for the backward pass (recomputes them from the row log-sum-exp).
  These do not implement dropout on probabilities or return weights; when either is asked for, the
  reference path runs instead.
- ``"auto"`` (the models' default): chosen by the platform the step is traced for (:func:`resolve_impl`):
  ``"reference"`` on CPU (the fastest measured there; benchmarks/RESULTS.md "Training"), ``"flash"`` on TPU
  (no [T, S] tensor kept for the backward pass: the TPU compiler's memory analysis of a llama2-7b step,
  RESULTS.md), ``"cudnn"`` on GPU for bfloat16/float16 with head_dim <= 128 (cuDNN's fused attention),
  else ``"flash"``.

Every function takes an :class:`AttentionConfig` (or any config with an ``attn_cfg`` property that returns
one, such as a model Config), so the block can be built and tested on its own.

Variants used by today's checkpoints (all off by default):

- score scale: ``scale`` multiplies q.k (None = 1/sqrt(K)); Gemma uses query_pre_attn_scalar^-1/2 and
  GPT-Neo no scaling at all (``scale=1.0``);
- logit soft-capping (Gemma 2): scores -> softcap * tanh(scores / softcap), after scaling and before any
  bias or mask (transformers' order); every implementation supports it (``"xla"``/``"cudnn"`` have no
  soft-cap, so with one they run the ``"flash"`` path, which differentiates through the tanh);
- biases on q/k/v only (Qwen2): ``qkv_bias=True`` with ``use_bias=False`` (the output projection follows
  ``use_bias``);
- RoPE scaling: ``rope_type`` "linear" or "llama3" (:func:`jaxlm.nn.positions.rope_frequencies`);
- QK-norm (``qk_norm``): an RMSNorm with a learned scale on the queries and on the keys, after their
  projection and before RoPE. ``"head"`` normalises each head over its K features with one [K] scale shared
  by the heads (Qwen3, Qwen team 2025, "Qwen3 Technical Report"); ``"full"`` normalises the whole projection,
  all H * K (keys: G * K) features of a token together, with an [H, K] ([G, K]) scale (OLMo 2, Team OLMo
  2024, "2 OLMo 2 Furious", §3.1). Both live in :func:`project_q` / :func:`project_kv`, so the KV-cache
  decode loop, which calls those, normalises exactly as the full forward does;
- sliding-window (local) attention is a mask (:func:`jaxlm.nn.masks.window_mask`), so it runs on every
  implementation. Per layer (Mistral all local, Gemma 2 local/global, GPT-Neo global/local), the decoder
  (:func:`jaxlm.models.decoder.run_layers`) builds the global and the local causal mask once and each layer
  picks its own: under ``lax.scan`` the choice is a per-layer boolean scanned with the weights, in the
  decode loop's per-layer list a Python bool. KV cache of a local layer: the full-length cache (the same
  [L, B, S_max, G, K] stack as the global layers) plus the window mask, NOT a rolling window-size buffer.
  Why: the stacked layers run under one ``lax.scan``, which needs one cache shape for all layers (a rolling
  buffer would need a second stack and a second scan for alternating patterns); prefill with left padding and
  packed segments stays the same masked computation as training, so cached decoding past the window equals
  a full recompute exactly (tested); and the cache is bounded by ``max_len`` anyway. The cost: a local layer
  holds S_max instead of W slots (Mistral 7B at 32k context: 8x the cache a rolling buffer would need) and
  attends over masked slots it could skip.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxlm import sharding
from jaxlm.nn import context as context_parallel
from jaxlm.nn import flash, linear, norms
from jaxlm.nn import positions as pos_enc
from jaxlm.params import Param, ones

IMPLS = ("auto", "reference", "xla", "cudnn", "flash")
QK_NORMS = (None, "head", "full")  # see the module docstring
_NEG = -1e30  # finite, so fully-masked rows give a uniform (not NaN) distribution


@dataclass(frozen=True, kw_only=True)
class AttentionConfig:
    """What attention reads: shapes, dtypes, initialisation, position scheme, dropout and kernel."""

    d_model: int
    n_heads: int
    n_kv_heads: int | None = None  # None = n_heads
    head_dim: int | None = None  # None = d_model // n_heads
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    use_bias: bool = True
    init: str = "normal"  # "normal" (init_std) or "xavier"
    init_std: float = 0.02
    out_scale: float = 1.0  # multiplies the output projection's init std (GPT-2: 1/sqrt(2 L))
    pos_emb: str = "none"  # "rope" and "alibi" act inside attention; other schemes are added to embeddings
    rope_theta: float = 10000.0
    rope_type: str = "default"  # "default", "linear" or "llama3" (positions.rope_frequencies)
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    dropout: float = 0.0  # on attention probabilities
    impl: str = "auto"
    scale: float | None = None  # multiplies q.k; None = head_dim ** -0.5
    softcap: float | None = None  # scores -> softcap * tanh(scores / softcap) (Gemma 2)
    qkv_bias: bool | None = None  # bias on q/k/v; None = use_bias (the output projection follows use_bias)
    qk_norm: str | None = None  # RMSNorm on q and k before RoPE: "head" (Qwen3) or "full" (OLMo 2); QK_NORMS
    qk_norm_eps: float = 1e-6

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def k_dim(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def has_qkv_bias(self) -> bool:
        return self.use_bias if self.qkv_bias is None else self.qkv_bias

    def inv_freq(self) -> jax.Array:
        """RoPE inverse frequencies [K/2], scaled per ``rope_type``."""
        return pos_enc.rope_frequencies(
            self.k_dim, self.rope_theta, rope_type=self.rope_type, factor=self.rope_factor,
            low_freq_factor=self.rope_low_freq_factor, high_freq_factor=self.rope_high_freq_factor,
            original_max_len=self.rope_original_max_len)


def config(cfg) -> AttentionConfig:
    """``cfg`` itself when it is an :class:`AttentionConfig`, else its ``attn_cfg``."""
    return cfg if isinstance(cfg, AttentionConfig) else cfg.attn_cfg


def spec(cfg) -> dict:
    """q: [D, H, K], k/v: [D, G, K], o: [H, K, D] (+ q/k/v biases when ``qkv_bias`` (default ``use_bias``),
    the o bias when ``use_bias``; + ``q_norm``/``k_norm`` scales with ``qk_norm``: [K] each for ``"head"``,
    [H, K] / [G, K] for ``"full"``)."""
    c = config(cfg)
    D, H, G, K = c.d_model, c.n_heads, c.kv_heads, c.k_dim
    qb = c.has_qkv_bias
    p = {
        "q": linear.spec(c, (D,), (H, K), ("embed",), ("heads", "head_dim"), bias=qb),
        "k": linear.spec(c, (D,), (G, K), ("embed",), ("kv_heads", "head_dim"), bias=qb),
        "v": linear.spec(c, (D,), (G, K), ("embed",), ("kv_heads", "head_dim"), bias=qb),
        "o": linear.spec(c, (H, K), (D,), ("heads", "head_dim"), ("embed",), scale=c.out_scale),
    }
    if c.qk_norm not in QK_NORMS:
        raise ValueError(f"qk_norm={c.qk_norm!r} is not one of {QK_NORMS} (None: off; 'head': per head over "
                         f"head_dim, Qwen3; 'full': over the whole projection, OLMo 2).")
    if c.qk_norm is not None:
        dt = jnp.dtype(c.param_dtype)
        for name, n, axis in (("q_norm", H, "heads"), ("k_norm", G, "kv_heads")):
            shape, axes = ((K,), ("head_dim",)) if c.qk_norm == "head" else ((n, K), (axis, "head_dim"))
            p[name] = {"scale": Param(shape, axes, ones, dt)}
    return p


def qk_norm(p: dict | None, x: jax.Array, cfg) -> jax.Array:
    """The QK-norm of queries [B, T, H, K] or keys [B, S, G, K] (``p``: their ``q_norm`` / ``k_norm``): RMSNorm
    over K for ``qk_norm="head"``, over the last two axes (all heads together) for ``"full"``, ``x`` itself
    when off. Statistics in float32, as :func:`jaxlm.nn.norms.rms_norm`."""
    c = config(cfg)
    if c.qk_norm is None:
        return x
    return norms.rms_norm(x, p["scale"], c.qk_norm_eps, axis=-1 if c.qk_norm == "head" else (-2, -1))


def softmax_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scores_eq: str,
    out_eq: str,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
    scale: float | None = None,
    softcap: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``softmax(cap(q k * scale) + bias, masked) v`` for any head layout, named by two einsum equations.

    ``scale`` defaults to 1/sqrt(K); ``cap(s) = softcap * tanh(s / softcap)`` when ``softcap`` is given
    (else the identity). ``scores_eq`` maps (q, k) to scores and ``out_eq`` maps (probabilities, v) to the
    output; ``mask`` (True = attend) and ``bias`` must broadcast to the scores. Scores and softmax are float32; the
    probabilities are cast to q's dtype for the value product. Returns (output, float32 probabilities).
    The grouped layout of :func:`dot_product_attention` and the KV-cache decode layout of
    :mod:`jaxlm.generate.kv_decode` both run through here.
    """
    scores = jnp.einsum(scores_eq, q, k).astype(jnp.float32) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1)
    p = probs.astype(q.dtype)
    if dropout_rate > 0.0 and key is not None:
        keep = jax.random.bernoulli(key, 1.0 - dropout_rate, p.shape)
        p = jnp.where(keep, p / (1.0 - dropout_rate), 0).astype(q.dtype)
    return jnp.einsum(out_eq, p, v), probs


def platform() -> str:
    """The platform the code is traced for: the devices of the mesh in use (a TPU slice planned from a CPU
    host traces for TPU), else JAX's default backend. ``"cpu"``, ``"gpu"`` or ``"tpu"``."""
    mesh = sharding.current_mesh()
    devices = getattr(mesh, "devices", None)
    name = devices.flat[0].platform if devices is not None and devices.size else jax.default_backend()
    return "gpu" if name in ("gpu", "cuda", "rocm") else name


def resolve_impl(impl: str, dtype, head_dim: int, on: str | None = None) -> str:
    """``impl`` itself, or for ``"auto"`` the implementation for platform ``on`` (default
    :func:`platform`): see the module docstring."""
    if impl != "auto":
        return impl
    on = on or platform()
    if on == "tpu":
        return "flash"
    if on == "gpu":
        half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        return "cudnn" if half and head_dim <= 128 and head_dim % 8 == 0 else "flash"
    return "reference"


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    impl: str = "auto",
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
    return_weights: bool = False,
    scale: float | None = None,
    softcap: float | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """Scaled dot-product attention over grouped heads.

    q: [B, T, H, K]; k, v: [B, S, G, K] with H % G == 0; mask: bool broadcastable to [B, H, T, S]
    (True = attend); bias: float broadcastable to [B, H, T, S]; ``scale`` (None = 1/sqrt(K)) and
    ``softcap`` as in :func:`softmax_attention`. Returns (out [B, T, H, K], weights [B, H, T, S] or None).
    """
    B, T, H, K = q.shape
    S, G = k.shape[1], k.shape[2]
    if H % G:
        raise ValueError(f"{H} query heads cannot be grouped over {G} key/value heads.")
    use_dropout = dropout_rate > 0.0 and key is not None
    impl = resolve_impl(impl, q.dtype, K)
    if impl in ("xla", "cudnn") and not use_dropout and not return_weights and softcap is None:
        out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation=impl)
        return out, None
    if impl in ("flash", "xla", "cudnn") and not use_dropout and not return_weights:  # xla/cudnn: soft-cap
        return flash.attention(q, k, v, mask=mask, bias=bias, scale=scale, softcap=softcap), None
    if impl not in IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose one of {IMPLS}.")
    h = H // G
    out, probs = softmax_attention(
        q.reshape(B, T, G, h, K), k, v, scores_eq="BTGhK,BSGK->BGhTS", out_eq="BGhTS,BSGK->BTGhK",
        mask=None if mask is None else _group(mask, G, h), bias=None if bias is None else _group(bias, G, h),
        dropout_rate=dropout_rate if use_dropout else 0.0, key=key, scale=scale, softcap=softcap)
    weights = probs.reshape(B, H, T, S) if return_weights else None
    return out.reshape(B, T, H, K), weights


def _group(x: jax.Array, G: int, h: int) -> jax.Array:
    """[B|1, H|1, T, S] -> [B|1, G|1, h|1, T, S] to match grouped logits."""
    b, n, t, s = x.shape
    if n == 1:
        return x[:, :, None]
    return x.reshape(b, G, h, t, s)


def project_q(p: dict, x: jax.Array, cfg, positions: jax.Array | None = None) -> jax.Array:
    """Queries for ``x`` [B, T, D] -> [B, T, H, K]; QK-norm with ``qk_norm``, then RoPE when
    ``pos_emb == "rope"``."""
    c = config(cfg)
    q = linear.apply(p["q"], x, "BTD,DHK->BTHK", jnp.dtype(c.dtype))
    q = qk_norm(p.get("q_norm"), q, c)  # before RoPE, as Qwen3 and OLMo 2 do
    if c.pos_emb == "rope":
        q = pos_enc.apply_rope(q, positions, c.rope_theta, c.inv_freq())
    return q


def project_kv(p: dict, x: jax.Array, cfg, positions: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Keys and values for ``x`` [B, S, D] -> ([B, S, G, K], [B, S, G, K]); QK-norm on the keys with
    ``qk_norm``; RoPE applied to keys when
    ``pos_emb == "rope"`` and ``positions`` [B, S] are given (cross-attention keys get none)."""
    c = config(cfg)
    dt = jnp.dtype(c.dtype)
    k = linear.apply(p["k"], x, "BSD,DGK->BSGK", dt)
    v = linear.apply(p["v"], x, "BSD,DGK->BSGK", dt)
    k = qk_norm(p.get("k_norm"), k, c)
    if c.pos_emb == "rope" and positions is not None:
        k = pos_enc.apply_rope(k, positions, c.rope_theta, c.inv_freq())
    return k, v


def apply(
    p: dict,
    x: jax.Array,
    cfg,
    *,
    kv: jax.Array | None = None,
    mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    cache: dict | None = None,
    cache_index: jax.Array | int | None = None,
    key: jax.Array | None = None,
    return_weights: bool = False,
    impl: str | None = None,
    bias: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """Attention of ``x`` [B, T, D] over itself (self) or over ``kv`` [B, S, D] (cross).

    ``positions`` [B, T] feed RoPE/ALiBi (``kv_positions`` [B, S] for the keys; default = the same).
    KV cache: with ``cache={"k","v": [B, S_max, G, K]}`` and an integer ``cache_index``, this step's keys and
    values are written at ``[cache_index, cache_index + T)`` and attention runs over the whole cache
    (``mask`` must then cover S_max). With ``cache`` and ``cache_index=None`` the cache is used as
    precomputed keys/values (cross-attention during decoding). ``bias`` (float, broadcastable to
    [B, H, T, S]) is added to the scores, e.g. T5's relative position bias. Returns (out [B, T, D], aux) where aux has
    ``"cache"`` when a cache was given and ``"weights"`` [B, H, T, S] when asked.
    """
    c = config(cfg)
    dt = jnp.dtype(c.dtype)
    B, T, _ = x.shape
    if positions is None and c.pos_emb in ("rope", "alibi"):
        positions = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    q = project_q(p, x, c, positions)
    aux: dict = {}
    if cache is not None and cache_index is None:
        k, v = cache["k"], cache["v"]
        aux["cache"] = cache
    else:
        src = x if kv is None else kv
        kvpos = positions if (kv is None and kv_positions is None) else kv_positions
        if kvpos is None and c.pos_emb in ("rope", "alibi"):
            kvpos = jnp.broadcast_to(jnp.arange(src.shape[1])[None], src.shape[:2])
        k, v = project_kv(p, src, c, kvpos if kv is None else None)
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), cache_index, axis=1)
            aux["cache"] = {"k": k, "v": v}
            k, v = k.astype(dt), v.astype(dt)
    # ALiBi is a self-attention bias; a precomputed cache with no cache_index is cross-attention: no bias
    if c.pos_emb == "alibi" and kv is None and not (cache is not None and cache_index is None):
        if kv_positions is not None:
            kp = kv_positions
        elif cache is None:
            kp = positions
        else:
            # distances must be between positions, not cache slots: with left padding a row's slots run
            # ahead of its positions by its pad length. The step's last token is a real one (padding is on
            # the left), so slot s holds position s - (its slot - its position).
            offset = cache_index + T - 1 - positions[:, -1:]  # [B, 1]
            kp = jnp.arange(k.shape[1])[None] - offset  # [B, S]
        alibi = pos_enc.alibi_bias(c.n_heads, positions, kp)
        bias = alibi if bias is None else bias + alibi
    rate = c.dropout if key is not None else 0.0
    if kv is None and cache is None:  # mesh.context > 1: queries stay sharded by position, K/V gathered
        q, k, v, mask = context_parallel.place(q, k, v, mask)
    out, w = dot_product_attention(
        q, k, v, mask=mask, bias=bias, impl=impl or c.impl, dropout_rate=rate, key=key,
        return_weights=return_weights, scale=c.scale, softcap=c.softcap,
    )
    if kv is None and cache is None:
        out = context_parallel.output(out)
    if return_weights:
        aux["weights"] = w
    y = linear.apply(p["o"], out, "BTHK,HKD->BTD", dt)
    return y, aux
