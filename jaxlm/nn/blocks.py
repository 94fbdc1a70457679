"""Residual Transformer blocks: self-attention, optional cross-attention, feed-forward; pre- or post-norm.

Post-norm (Vaswani et al.): ``x = Norm(x + Dropout(Sublayer(x)))``.
Pre-norm (GPT-2, LLaMA):    ``x = x + Dropout(Sublayer(Norm(x)))``.
Pre- and post-norm (Gemma 2, ``post_norms=True``): ``x = x + Dropout(PostNorm(Sublayer(Norm(x))))``, a
second norm on each sub-layer's output before the residual sum (transformers' ``post_attention_layernorm`` /
``post_feedforward_layernorm``).
Post-sub-layer norms only (OLMo 2, ``post_norms=True, pre_norms=False``): ``x = x + Dropout(PostNorm(Sublayer(x)))``,
the sub-layer reads the residual stream un-normalised (Team OLMo 2024, "2 OLMo 2 Furious", §3.1); the block
has ``post_norm1`` / ``post_norm2`` and no ``norm1`` / ``norm2``.

The sub-layer functions are arguments (``attn_fn``, ``ffn_fn``, ``norm_fn``), so a user composes a
different block by passing different functions with the same signatures; each receives its own narrow
config (:class:`~jaxlm.nn.attention.AttentionConfig`, :class:`~jaxlm.nn.ffn.FFNConfig`,
:class:`~jaxlm.nn.norms.NormConfig`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax

from jaxlm import sharding
from jaxlm.nn import attention, ffn, moe, norms


@dataclass(frozen=True, kw_only=True)
class BlockConfig:
    """A block's sub-layer configs, where its norms sit, and the residual dropout rate."""

    attn: attention.AttentionConfig
    ffn: ffn.FFNConfig | moe.MoEConfig  # a MoEConfig makes the feed-forward a routed mixture of experts
    norm: norms.NormConfig
    norm_position: str = "pre"  # "pre" or "post"
    dropout: float = 0.0  # on each sub-layer's output before the residual sum
    post_norms: bool = False  # with "pre": also normalise each sub-layer's output (Gemma 2's sandwich norms)
    pre_norms: bool = True  # False with post_norms: normalise only each sub-layer's output (OLMo 2)


def config(cfg) -> BlockConfig:
    """``cfg`` itself when it is a :class:`BlockConfig`, else its ``block_cfg``."""
    return cfg if isinstance(cfg, BlockConfig) else cfg.block_cfg


def spec(cfg, *, cross: bool = False) -> dict:
    """``norm1, attn, [norm_cross, cross], norm2, mlp`` (+ ``post_norm1, [post_norm_cross], post_norm2``
    with ``post_norms``; without ``norm1``, ``norm_cross``, ``norm2`` when ``pre_norms=False``)."""
    c = config(cfg)
    if c.post_norms and c.norm_position != "pre":
        raise ValueError("post_norms=True adds a norm on each sub-layer's output inside a pre-norm block; "
                         "it needs norm_position='pre' (a post-norm block already normalises after the sum).")
    if not c.pre_norms and not (c.post_norms and c.norm_position == "pre"):
        raise ValueError("pre_norms=False drops the norms on each sub-layer's input; it needs post_norms=True "
                         "and norm_position='pre' (OLMo 2's norms on each sub-layer's output), else the block "
                         "would have no norm at all.")
    pre = c.pre_norms
    p = {"norm1": norms.spec(c.norm)} if pre else {}
    p["attn"] = attention.spec(c.attn)
    if cross:
        if pre:
            p["norm_cross"] = norms.spec(c.norm)
        p["cross"] = attention.spec(c.attn)
    if pre:
        p["norm2"] = norms.spec(c.norm)
    p["mlp"] = moe.spec(c.ffn) if isinstance(c.ffn, moe.MoEConfig) else ffn.spec(c.ffn)
    if c.post_norms:
        p["post_norm1"] = norms.spec(c.norm)
        if cross:
            p["post_norm_cross"] = norms.spec(c.norm)
        p["post_norm2"] = norms.spec(c.norm)
    return p


def _keys(key, n):
    return [None] * n if key is None else list(jax.random.split(key, n))


def apply(
    p: dict,
    x: jax.Array,
    cfg,
    *,
    mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    enc: jax.Array | None = None,
    enc_mask: jax.Array | None = None,
    cache: dict | None = None,
    cache_index=None,
    key: jax.Array | None = None,
    return_weights: bool = False,
    bias: jax.Array | None = None,
    attn_fn: Callable = attention.apply,
    ffn_fn: Callable | None = None,
    norm_fn: Callable = norms.apply,
) -> tuple[jax.Array, dict]:
    """One block on ``x`` [B, T, D] -> ([B, T, D], aux).

    ``enc`` [B, S, D] with ``enc_mask`` enables cross-attention (the block must have been built with
    ``cross=True``). ``cache`` = ``{"self": {"k","v"}, "cross": {"k","v"}}`` for incremental decoding;
    aux carries the updated ``"cache"`` and, when asked, ``"weights"`` / ``"cross_weights"``.
    ``key`` (None = deterministic) drives attention, residual and FFN dropout. ``bias`` (float,
    broadcastable to [B, H, T, S]) is added to the self-attention scores (T5's relative position bias);
    it is passed to ``attn_fn`` only when given, so attention functions without a ``bias`` keyword work.
    ``ffn_fn`` defaults to :func:`jaxlm.nn.ffn.apply`, or :func:`jaxlm.nn.moe.apply` when the block's ffn
    config is a :class:`~jaxlm.nn.moe.MoEConfig`; an ``ffn_fn`` that returns ``(y, stats)`` (a routed
    layer) puts its stats in aux as ``"moe"``.
    """
    c = config(cfg)
    k_attn, k_res1, k_x, k_res2, k_ffn, k_res3 = _keys(key, 6)
    pre = c.norm_position == "pre"
    rate = c.dropout

    def in_norm(name: str, y: jax.Array) -> jax.Array:  # the pre-norm on a sub-layer's input (none in OLMo 2)
        return norm_fn(p[name], y, c.norm) if pre and c.pre_norms else y

    def out_norm(name: str, y: jax.Array) -> jax.Array:  # Gemma 2's norm on a sub-layer's output
        return norm_fn(p["post_" + name], y, c.norm) if c.post_norms else y

    aux: dict = {}
    new_cache: dict = {}

    h = in_norm("norm1", x)
    a, a_aux = attn_fn(p["attn"], h, c.attn, mask=mask, positions=positions,
                       cache=None if cache is None else cache["self"], cache_index=cache_index,
                       key=k_attn, return_weights=return_weights, **({} if bias is None else {"bias": bias}))
    x = x + ffn.dropout(out_norm("norm1", a), rate, k_res1)
    if not pre:
        x = norm_fn(p["norm1"], x, c.norm)
    if "cache" in a_aux:
        new_cache["self"] = a_aux["cache"]
    if return_weights:
        aux["weights"] = a_aux["weights"]

    if "cross" in p and (enc is not None or (cache is not None and "cross" in cache)):
        h = in_norm("norm_cross", x)
        y, c_aux = attn_fn(p["cross"], h, c.attn, kv=enc, mask=enc_mask,
                           cache=None if cache is None else cache.get("cross"), cache_index=None,
                           key=k_x, return_weights=return_weights)
        x = x + ffn.dropout(out_norm("norm_cross", y), rate, k_res2)
        if not pre:
            x = norm_fn(p["norm_cross"], x, c.norm)
        if "cache" in c_aux:
            new_cache["cross"] = c_aux["cache"]
        if return_weights:
            aux["cross_weights"] = c_aux["weights"]

    h = in_norm("norm2", x)
    if ffn_fn is None:
        ffn_fn = moe.apply if isinstance(c.ffn, moe.MoEConfig) else ffn.apply
    y = ffn_fn(p["mlp"], h, c.ffn, key=k_ffn)
    if isinstance(y, tuple):  # a routed FFN also returns its router statistics (jaxlm.nn.moe)
        y, aux["moe"] = y
    x = x + ffn.dropout(out_norm("norm2", y), rate, k_res3)
    if not pre:
        x = norm_fn(p["norm2"], x, c.norm)
    if cache is not None:
        aux["cache"] = new_cache
    x = sharding.constrain(x, ("batch", "seq", "act_embed"))
    return x, aux
