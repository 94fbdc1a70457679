"""One incremental-decoding interface over the model families.

``prefill(params, cfg, tokens, lengths, cache_len)`` runs the prompt (decoders) or the encoder plus the BOS
step (encoder-decoder) and returns ``(logits [B, V], cache, ctx)``: the logits that choose the first new
token, the KV cache and the per-example context (padding masks, lengths) the later steps need.
``step(params, cfg, tok [B], j, cache, ctx)`` feeds the ``j``-th new token (0-based) and returns the logits
[B, V] for token ``j + 1`` and the updated cache.

Cache leaves carry the batch on axis 1 (``[L, B, S, G, K]``); ctx leaves on axis 0. Beam search relies on
this to repeat and reorder beams (:func:`repeat`, :func:`reorder_beams`).

Both families scan over their stacked layers inside ``apply``/``decode``, so under one jit the layer
weights are read in place, never copied per token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.generate.inputs import is_encoder_decoder
from jaxlm.models import family_of


def prefill(params: dict, cfg, tokens: jax.Array, lengths: jax.Array, cache_len: int):
    """Decoders: ``tokens`` [B, P] left-padded prompts, ``lengths`` [B]. Enc-dec: ``tokens`` [B, S_src]
    right-padded sources. Returns (logits [B, V] float32, cache, ctx)."""
    mod = family_of(cfg)
    B, P = tokens.shape
    if is_encoder_decoder(cfg):
        src_valid = jnp.arange(P)[None] < lengths[:, None]  # [B, S_src]
        enc = mod.encode(params, tokens, cfg, src_valid=src_valid)  # [B, S_src, D], run once
        cache = {"self": mod.init_cache(cfg, B, cache_len)["self"],
                 "cross": mod.cross_cache(params, enc, cfg)}  # cross-attention K/V computed once
        bos = jnp.full((B, 1), cfg.bos_id, jnp.int32)
        logits, aux = mod.decode(params, bos, None, cfg, src_valid=src_valid, cache=cache, cache_index=0)
        ctx = {"src_valid": src_valid}
        return logits[:, -1], aux["cache"], ctx
    pad = P - lengths  # [B] left-padding per row
    kv_valid = jnp.arange(cache_len)[None] >= pad[:, None]  # [B, S]: padding slots are never attended
    positions = jnp.maximum(jnp.arange(P)[None] - pad[:, None], 0)  # [B, P]: real tokens start at 0
    cache = mod.init_cache(cfg, B, cache_len)
    logits, aux = mod.apply(params, tokens, cfg, positions=positions, kv_valid=kv_valid, cache=cache,
                            cache_index=0)
    ctx = {"kv_valid": kv_valid, "lengths": lengths, "start": jnp.full((B,), P, jnp.int32)}
    return logits[:, -1], aux["cache"], ctx


def step(params: dict, cfg, tok: jax.Array, j: jax.Array, cache: dict, ctx: dict):
    """Feed new token ``j`` (``tok`` [B]) -> (logits [B, V] for token j + 1, cache)."""
    mod = family_of(cfg)
    tok = tok[:, None].astype(jnp.int32)  # [B, 1]
    if is_encoder_decoder(cfg):
        slot = j + 1  # slot 0 holds BOS
        logits, aux = mod.decode(params, tok, None, cfg, src_valid=ctx["src_valid"], cache=cache,
                                 cache_index=slot)
        return logits[:, -1], aux["cache"]
    slot = ctx["start"][0] + j
    positions = (ctx["lengths"] + j)[:, None]  # [B, 1]
    logits, aux = mod.apply(params, tok, cfg, positions=positions, kv_valid=ctx["kv_valid"], cache=cache,
                            cache_index=slot)
    return logits[:, -1], aux["cache"]


def repeat(cache: dict, ctx: dict, n: int) -> tuple[dict, dict]:
    """Repeat every example ``n`` times (b -> b*n ... b*n + n - 1): the beams of one example."""
    cache = jax.tree.map(lambda a: jnp.repeat(a, n, axis=1), cache)
    ctx = jax.tree.map(lambda a: jnp.repeat(a, n, axis=0), ctx)
    return cache, ctx


def reorder_beams(cache: dict, idx: jax.Array) -> dict:
    """Gather the self-attention cache rows ``idx`` [B * W]. Beams only move within their example, so the
    cross-attention cache and ctx (identical across one example's beams) stay as they are."""
    out = dict(cache)
    out["self"] = jax.tree.map(lambda a: jnp.take(a, idx, axis=1), cache["self"])
    return out
