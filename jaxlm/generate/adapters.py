"""One incremental-decoding interface over the model families.

``prefill(params, cfg, tokens, lengths, cache_len)`` runs the prompt (decoders) or the encoder plus the BOS
step (encoder-decoder) through the family's own ``apply``/``decode`` (a ``lax.scan`` over the stacked
layers) and returns ``(logits [B, V], cache, ctx)``: the logits that choose the first new token, the KV
cache and the per-example context (padding masks, lengths) the later steps need.
``step(params, layers, cfg, tok [B], j, cache, ctx)`` feeds the ``j``-th new token (0-based) and returns the
logits [B, V] for token ``j + 1`` and the updated cache.

Why the decode step does not call ``apply`` with the model's stacked cache (measured on the benchmark
model: 6 layers, 288 cache slots, 2-core CPU; see benchmarks/RESULTS.md):

1. inside ``lax.scan`` each layer's slice of a stacked ``[L, B, S, G, K]`` cache is copied in (scan ``xs``)
   and out again (scan ``ys``) on every token: 13.4 ms/token at batch 8, against 4.9 ms/token with a
   63-slot cache;
2. the attention einsums want head-major operands, so XLA also transposed (copied) each layer's whole
   cache on every token (seen in the optimised HLO);
3. with a ``[B, G, S, K]`` cache at batch 1 XLA drops the unit batch dimension for the attention and then
   computes the cache update twice, copying the cache twice per layer and token; a ``[B * G, S, K]`` cache
   has no unit dimension to drop (unless B = G = 1).

So after the prefill the cache is split once into one ``[B * G, S, K]`` buffer per layer (rows = (example,
key/value head) pairs), updated in place (``dynamic_update_slice`` on a ``while_loop`` carry), and the step
runs the model's own blocks (:func:`jaxlm.nn.blocks.apply`) layer by layer, with :func:`decode_attention`
for the one-token attention, over weights split from the stack outside the token loop (:func:`layers`), so
no weights are copied per token either (DESIGN §7). Tests hold these steps equal to a full recompute for
every family.

Cache: ``{"self": [{"k","v": [B * G, S, K]}] * L (+ "cross": same, computed once)}``; ctx leaves [B, ...].
"""

from __future__ import annotations

import weakref

import jax
import jax.numpy as jnp

from jaxlm.generate.inputs import is_encoder_decoder
from jaxlm.models import decoder, family_of
from jaxlm.nn import attention, blocks, embed, linear, masks, norms, positions


def _to_model_layout(c: dict, B: int) -> dict:
    """[B * G, S, K] -> [B, S, G, K] (the layout :func:`jaxlm.nn.attention.apply` reads)."""
    return {n: c[n].reshape(B, -1, *c[n].shape[1:]).transpose(0, 2, 1, 3) for n in ("k", "v")}


def _to_decode_layout(c: dict) -> dict:
    """[B, S, G, K] -> [B * G, S, K]."""
    return {n: c[n].transpose(0, 2, 1, 3).reshape(-1, c[n].shape[1], c[n].shape[3]) for n in ("k", "v")}


def decode_attention(p: dict, x: jax.Array, cfg, *, kv=None, mask=None, positions_=None, cache=None,
                     cache_index=None, key=None, return_weights: bool = False, **kw) -> tuple[jax.Array, dict]:
    """:func:`jaxlm.nn.attention.apply` for one new token against a KV cache stored as ``[B * G, S, K]``.

    x [B, 1, D]; cache ``{"k","v": [B * G, S, K]}`` (the module docstring says why this layout); mask
    [B|1, 1, 1, S]. Anything else (several tokens, dropout, attention weights, ALiBi) runs the general
    :func:`jaxlm.nn.attention.apply` on the cache converted to its layout and back (slow, but correct).
    """
    B = x.shape[0]
    if cache is None:
        return attention.apply(p, x, cfg, kv=kv, mask=mask, positions_=positions_, cache=cache,
                               cache_index=cache_index, key=key, return_weights=return_weights, **kw)
    if (kv is not None or x.shape[1] != 1 or return_weights or cfg.pos_emb == "alibi"
            or (key is not None and cfg.attn_dropout > 0)):
        y, aux = attention.apply(p, x, cfg, kv=kv, mask=mask, positions_=positions_,
                                 cache=_to_model_layout(cache, B), cache_index=cache_index, key=key,
                                 return_weights=return_weights, **kw)
        return y, aux | {"cache": _to_decode_layout(aux["cache"])}
    dt = jnp.dtype(cfg.dtype)
    q = linear.apply(p["q"], x, "BTD,DHK->BTHK", dt)  # [B, 1, H, K]
    if cfg.pos_emb == "rope":
        q = positions.apply_rope(q, positions_, cfg.rope_theta)
    if cache_index is None:  # cross-attention: keys/values precomputed once
        k, v = cache["k"], cache["v"]
        new_cache = cache
    else:
        k_new, v_new = attention.project_kv(p, x, cfg, positions_)  # [B, 1, G, K], RoPE applied
        K = k_new.shape[-1]
        k_new, v_new = (a.reshape(-1, 1, K).astype(cache["k"].dtype) for a in (k_new, v_new))  # [B * G, 1, K]
        k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k_new, cache_index, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v_new, cache_index, axis=1)
        new_cache = {"k": k, "v": v}
    N, S, K = k.shape  # N = B * G
    H = q.shape[2]
    qg = q.reshape(N, H * B // N, K)  # [B * G, h, K]: the h query heads sharing each key/value head
    scores = jnp.einsum("NhK,NSK->NhS", qg, k.astype(dt)).astype(jnp.float32) * (K**-0.5)
    if mask is not None:
        m = jnp.broadcast_to(mask[:, 0, 0, :], (B, S))  # [B, S]
        scores = jnp.where(jnp.repeat(m, N // B, axis=0)[:, None, :], scores, -1e30)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    out = jnp.einsum("NhS,NSK->NhK", probs, v.astype(dt))  # [B * G, h, K]
    y = linear.apply(p["o"], out.reshape(B, 1, H, K), "BTHK,HKD->BTD", dt)  # [B, 1, D]
    return y, {"cache": new_cache}


def _unstack(stacked: dict) -> list[dict]:
    """The model's cache {"k","v": [L, B, S, G, K]} -> per layer [{"k","v": [B * G, S, K]}] * L (one copy
    after the prefill)."""
    return [_to_decode_layout({n: stacked[n][i] for n in ("k", "v")}) for i in range(stacked["k"].shape[0])]


def _split(params: dict, cfg) -> list[dict]:
    stacked = params["decoder"]["layers"] if is_encoder_decoder(cfg) else params["layers"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n)]


_split_jit = jax.jit(_split, static_argnums=1)
_LAST: list = []  # [(weak references to the stacked leaves, cfg, split)]: the most recent model only


def layers(params: dict, cfg) -> list[dict]:
    """The decoder's stacked layer weights as one tree per layer, for the decode loop.

    A copy, made outside the jitted loop (slicing stacked weights *inside* the loop body copies every weight
    on every token: 3.2 ms/token on the benchmark model; DESIGN §7). The copy of the most recent model is
    kept while its arrays live, so repeated calls with the same params do not pay it again (42 MB took
    ~40 ms here, mostly first-touch page faults); it costs one extra copy of the layer weights in memory
    until those params are garbage-collected or :func:`clear` is called.
    """
    stacked = jax.tree.leaves(params["decoder"]["layers"] if is_encoder_decoder(cfg) else params["layers"])
    if _LAST:
        refs, c, split = _LAST[0]
        if c == cfg and len(refs) == len(stacked) and all(r() is a for r, a in zip(refs, stacked)):
            return split
    split = _split_jit(params, cfg)
    if all(isinstance(a, jax.Array) for a in stacked):  # immutable, so identity means same values
        entry = (tuple(weakref.ref(a) for a in stacked), cfg, split)
        _LAST[:] = [entry]
        weakref.finalize(stacked[0], _forget, id(entry))  # the model is gone: free its copy too
    else:  # e.g. numpy arrays, which may change in place: no reuse
        _LAST.clear()
    return split


def _forget(entry_id: int) -> None:
    if _LAST and id(_LAST[0]) == entry_id:
        _LAST.clear()


def clear() -> None:
    """Forget the per-layer weight copy kept by :func:`layers`."""
    _LAST.clear()


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


def step(params: dict, layer_params: list[dict], cfg, tok: jax.Array, j: jax.Array, cache: dict, ctx: dict):
    """Feed new token ``j`` (``tok`` [B]) -> (logits [B, V] for token j + 1, cache)."""
    tok = tok[:, None].astype(jnp.int32)  # [B, 1]
    B = tok.shape[0]
    S = cache["self"][0]["k"].shape[1]
    dt = jnp.dtype(cfg.dtype)
    encdec = is_encoder_decoder(cfg)
    if encdec:
        slot = j + 1  # slot 0 holds BOS; target positions are the slots
        pos = jnp.full((B, 1), slot, jnp.int32)
        x = embed.apply(params["embed"], tok, dt, scale=cfg.d_model**0.5 if cfg.embed_scale else None)
        x = x + (positions.sinusoidal(pos, cfg.d_model, dt) if cfg.pos_emb == "sinusoidal"
                 else positions.learned(params["embed"], pos, dt))
        kv_valid = None
        enc_mask = masks.make_mask(1, ctx["src_valid"].shape[1], kv_valid=ctx["src_valid"])
    else:
        slot = ctx["start"][0] + j
        pos = (ctx["lengths"] + j)[:, None]  # [B, 1]: each row's own position
        if cfg.pos_emb == "alibi":
            pos = jnp.full((B, 1), slot, jnp.int32)  # see prefill
        x = decoder.embed_tokens(params, tok, cfg, pos)  # [B, 1, D]
        kv_valid, enc_mask = ctx["kv_valid"], None
    mask = masks.make_mask(1, S, causal=True, q_positions=jnp.full((B, 1), slot), kv_positions=jnp.arange(S)[None],
                           kv_valid=kv_valid)  # [B, 1, 1, S]
    new = {"self": []} | ({"cross": cache["cross"]} if encdec else {})
    for i, p in enumerate(layer_params):
        c = {"self": cache["self"][i]} | ({"cross": cache["cross"][i]} if encdec else {})
        x, aux = blocks.apply(p, x, cfg, mask=mask, positions_=pos, enc_mask=enc_mask, cache=c, cache_index=slot,
                              attn_fn=decode_attention)
        new["self"].append(aux["cache"]["self"])
    final = params["decoder"].get("final_norm") if encdec else params.get("final_norm")
    if final is not None:
        x = norms.apply(final, x, cfg)
    logits = decoder.logits_from_hidden(params, x, cfg)  # [B, 1, V]; same head for both families
    return logits[:, -1], new


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
