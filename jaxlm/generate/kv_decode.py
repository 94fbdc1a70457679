"""The KV-cache decode path: prefill, then one token at a time through the model's own decoder.

``prefill(params, cfg, tokens, lengths, cache_len)`` runs the prompt (decoders) or the encoder plus the BOS
step (encoder-decoder) through the family's ``apply``/``decode`` (a ``lax.scan`` over the stacked layers)
and returns ``(logits [B, V], cache, ctx)``: the logits that choose the first new token, the KV cache and
the per-example context (padding masks, lengths) the later steps need.
``step(params, layers, cfg, tok [B], j, cache, ctx)`` feeds the ``j``-th new token (0-based) through the
same ``apply``/``decode`` (:func:`jaxlm.models.decoder.decode`) and returns the logits [B, V] for token
``j + 1`` and the updated cache.

Why the step does not reuse the prefill's stacked cache and scanned layers (benchmarks/HISTORY.md "Generation" has the
measurements):

1. inside ``lax.scan`` each layer's slice of a stacked ``[L, B, S, G, K]`` cache is copied in (scan ``xs``)
   and out again (scan ``ys``) on every token;
2. the attention einsums want head-major operands, so XLA also transposed (copied) each layer's whole
   cache on every token;
3. with a ``[B, G, S, K]`` cache at batch 1 XLA drops the unit batch dimension for the attention and then
   computes the cache update twice, copying the cache twice per layer and token; a ``[B * G, S, K]`` cache
   has no unit dimension to drop (unless B = G = 1).

So after the prefill the cache is split once into one ``[B * G, S, K]`` buffer per layer (rows = (example,
key/value head) pairs), updated in place (``dynamic_update_slice`` on a ``while_loop`` carry), and the step
runs the decoder over a list of per-layer weights split from the stack outside the token loop
(:func:`split_layers`; slicing stacked weights inside the loop would copy every weight on every token),
with :func:`decode_attention` for the one-token attention in that layout. Tests hold these steps equal to a
full recompute for every family.

Cache: ``{"self": [{"k","v": [B * G, S, K]}] * L (+ "cross": same, computed once)}``; ctx leaves [B, ...].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlm.generate.inputs import is_encoder_decoder
from jaxlm.models import family_of
from jaxlm.nn import attention, blocks, linear


def _to_model_layout(c: dict, B: int) -> dict:
    """[B * G, S, K] -> [B, S, G, K] (the layout :func:`jaxlm.nn.attention.apply` reads)."""
    return {n: c[n].reshape(B, -1, *c[n].shape[1:]).transpose(0, 2, 1, 3) for n in ("k", "v")}


def _to_decode_layout(c: dict) -> dict:
    """[B, S, G, K] -> [B * G, S, K]."""
    return {n: c[n].transpose(0, 2, 1, 3).reshape(-1, c[n].shape[1], c[n].shape[3]) for n in ("k", "v")}


def decode_attention(p: dict, x: jax.Array, cfg, *, kv=None, mask=None, positions=None, cache=None,
                     cache_index=None, key=None, return_weights: bool = False, bias=None,
                     **kw) -> tuple[jax.Array, dict]:
    """:func:`jaxlm.nn.attention.apply` for one new token against a KV cache stored as ``[B * G, S, K]``.

    x [B, 1, D]; cache ``{"k","v": [B * G, S, K]}`` (the module docstring says why this layout); mask
    [B|1, 1, 1, S]; ``bias`` [B|1, H, 1, S] is added to the scores (T5). Anything else (several tokens, dropout, attention weights, ALiBi) runs the general
    :func:`jaxlm.nn.attention.apply` on the cache converted to its layout and back (slow, but correct).
    """
    c = attention.config(cfg)
    B = x.shape[0]
    if cache is None:
        return attention.apply(p, x, c, kv=kv, mask=mask, positions=positions, cache=cache,
                               cache_index=cache_index, key=key, return_weights=return_weights, bias=bias, **kw)
    if (kv is not None or x.shape[1] != 1 or return_weights or c.pos_emb == "alibi"
            or (key is not None and c.dropout > 0)):
        y, aux = attention.apply(p, x, c, kv=kv, mask=mask, positions=positions,
                                 cache=_to_model_layout(cache, B), cache_index=cache_index, key=key,
                                 return_weights=return_weights, bias=bias, **kw)
        return y, aux | {"cache": _to_decode_layout(aux["cache"])}
    dt = jnp.dtype(c.dtype)
    q = attention.project_q(p, x, c, positions)  # [B, 1, H, K], RoPE applied
    if cache_index is None:  # cross-attention: keys/values precomputed once
        k, v = cache["k"], cache["v"]
        new_cache = cache
    else:
        k_new, v_new = attention.project_kv(p, x, c, positions)  # [B, 1, G, K], RoPE applied
        K = k_new.shape[-1]
        k_new, v_new = (a.reshape(-1, 1, K).astype(cache["k"].dtype) for a in (k_new, v_new))  # [B * G, 1, K]
        k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k_new, cache_index, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v_new, cache_index, axis=1)
        new_cache = {"k": k, "v": v}
    N, S, K = k.shape  # N = B * G
    H = q.shape[2]
    qg = q.reshape(N, H * B // N, K)  # [B * G, h, K]: the h query heads sharing each key/value head
    m = None
    if mask is not None:
        m = jnp.repeat(jnp.broadcast_to(mask[:, 0, 0, :], (B, S)), N // B, axis=0)[:, None, :]  # [B * G, 1, S]
    bg = None
    if bias is not None:  # [B|1, H, 1, S] -> [B * G, h, S], rows in the cache's (example, kv head) order
        bg = jnp.broadcast_to(bias[:, :, 0, :], (B, H, S)).reshape(N, H * B // N, S)
    out, _ = attention.softmax_attention(qg, k.astype(dt), v.astype(dt), scores_eq="NhK,NSK->NhS",
                                         out_eq="NhS,NSK->NhK", mask=m, bias=bg, scale=c.scale,
                                         softcap=c.softcap)  # [B * G, h, K]
    y = linear.apply(p["o"], out.reshape(B, 1, H, K), "BTHK,HKD->BTD", dt)  # [B, 1, D]
    return y, {"cache": new_cache}


_decode_block = functools.partial(blocks.apply, attn_fn=decode_attention)


def _unstack(stacked: dict) -> list[dict]:
    """The model's cache {"k","v": [L, B, S, G, K]} -> per layer [{"k","v": [B * G, S, K]}] * L (one copy
    after the prefill)."""
    return [_to_decode_layout({n: stacked[n][i] for n in ("k", "v")}) for i in range(stacked["k"].shape[0])]


def _stacked_decoder_layers(params: dict, cfg) -> dict:
    # the family contract: a decoder-only model keeps its stack at params["layers"], an encoder-decoder
    # its decoder's at params["decoder"]["layers"]
    return params["decoder"]["layers"] if is_encoder_decoder(cfg) else params["layers"]


@functools.partial(jax.jit, static_argnums=1)
def _split(params: dict, cfg) -> list[dict]:
    stacked = _stacked_decoder_layers(params, cfg)
    n = jax.tree.leaves(stacked)[0].shape[0]
    return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n)]


def split_layers(params: dict, cfg) -> list[dict]:
    """The decoder's stacked layer weights as one tree per layer, for the decode loop.

    A copy, made outside the jitted loop. :func:`~jaxlm.generate.generate`, :func:`~jaxlm.generate.stream`
    and :func:`~jaxlm.generate.beam_search` make it on each call unless given one (``layers=``): callers
    that generate repeatedly from the same params make it once and pass it, holding its memory as long as
    they keep it.
    """
    return _split(params, cfg)


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
        cache = {"self": _unstack(aux["cache"]["self"]), "cross": _unstack(aux["cache"]["cross"])}
        return logits[:, -1], cache, {"src_valid": src_valid}
    pad = P - lengths  # [B] left-padding per row
    kv_valid = jnp.arange(cache_len)[None] >= pad[:, None]  # [B, S]: padding slots are never attended
    pos = jnp.maximum(jnp.arange(P)[None] - pad[:, None], 0)  # [B, P]: real tokens start at position 0
    if cfg.pos_emb == "alibi":
        # ALiBi only sees distances, and the model's cached attention measures key distances in cache slots:
        # number queries by slot too, so the padding shift cancels
        pos = jnp.broadcast_to(jnp.arange(P)[None], (B, P))
    logits, aux = mod.apply(params, tokens, cfg, positions=pos, kv_valid=kv_valid,
                            cache=mod.init_cache(cfg, B, cache_len), cache_index=0)
    ctx = {"kv_valid": kv_valid, "lengths": lengths, "start": jnp.full((B,), P, jnp.int32)}
    return logits[:, -1], {"self": _unstack(aux["cache"]["self"])}, ctx


def step(params: dict, layers: list[dict], cfg, tok: jax.Array, j: jax.Array, cache: dict, ctx: dict):
    """Feed new token ``j`` (``tok`` [B]) -> (logits [B, V] for token j + 1, cache)."""
    mod = family_of(cfg)
    tok = tok[:, None].astype(jnp.int32)  # [B, 1]
    B = tok.shape[0]
    if is_encoder_decoder(cfg):
        slot = j + 1  # slot 0 holds BOS; target positions are the slots
        logits, aux = mod.decode(params, tok, None, cfg, src_valid=ctx["src_valid"],
                                 positions=jnp.full((B, 1), slot, jnp.int32), cache=cache, cache_index=slot,
                                 layers=layers, block_fn=_decode_block)
    else:
        slot = ctx["start"][0] + j
        pos = (ctx["lengths"] + j)[:, None]  # [B, 1]: each row's own position
        if cfg.pos_emb == "alibi":
            pos = jnp.full((B, 1), slot, jnp.int32)  # see prefill
        logits, aux = mod.apply(params, tok, cfg, positions=pos, kv_valid=ctx["kv_valid"], cache=cache,
                                cache_index=slot, layers=layers, block_fn=_decode_block)
    return logits[:, -1], aux["cache"]


def repeat(cache: dict, ctx: dict, n: int) -> tuple[dict, dict]:
    """Repeat every example ``n`` times (b -> b*n ... b*n + n - 1): the beams of one example. Cache rows
    are (example, kv head) pairs, so whole groups of G rows are repeated."""
    G = cache["self"][0]["k"].shape[0] // jax.tree.leaves(ctx)[0].shape[0]
    cache = jax.tree.map(lambda a: jnp.repeat(a.reshape(-1, G, *a.shape[1:]), n, axis=0).reshape(-1, *a.shape[1:]),
                         cache)
    ctx = jax.tree.map(lambda a: jnp.repeat(a, n, axis=0), ctx)
    return cache, ctx


def reorder_beams(cache: dict, idx: jax.Array) -> dict:
    """Gather the self-attention cache of examples ``idx`` [B * W]. Beams only move within their example, so
    the cross-attention cache and ctx (identical across one example's beams) stay as they are."""
    G = cache["self"][0]["k"].shape[0] // idx.shape[0]
    out = dict(cache)
    out["self"] = jax.tree.map(
        lambda a: jnp.take(a.reshape(-1, G, *a.shape[1:]), idx, axis=0).reshape(a.shape), cache["self"])
    return out
