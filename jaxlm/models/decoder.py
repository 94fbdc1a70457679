"""The one decoder stack: embedding, masks, the layer loop and the output head, shared by every family.

A decoder-only causal LM (GPT-2, LLaMA) is :func:`apply`: tokens [B, T] -> embeddings (+ absolute
positions) -> L blocks of causal self-attention -> final norm -> logits [B, T, V] (tied: x @ E^T, or an
untied head). The encoder-decoder's decoder (:func:`jaxlm.models.transformer.decode`) is the same
:func:`decode` with cross-attention to the encoder output, and the KV-cache decode loop
(:mod:`jaxlm.generate.kv_decode`) runs :func:`decode` too, one token at a time, over the layers split from
the stack once (``layers=``, a list of per-layer trees) and a cache laid out for one-token attention.
Encoders (BERT, the Transformer's encoder) reuse :func:`embed` and :func:`run_layers` with a
bidirectional mask.

Return convention of every ``apply``/``decode``/``encode`` here and in the families: the output alone, or
``(output, aux)`` when anything that lives in aux was asked for (``return_aux``, a ``cache``,
``return_weights``, ``return_hidden``). aux may hold ``cache`` (the updated KV cache), ``weights``
[L, B, H, T, S] (``cross_weights`` for cross-attention), ``hidden`` (the final hidden states [B, T, D]) and,
for a mixture-of-experts FFN, ``moe`` (its router statistics per layer, see :mod:`jaxlm.nn.moe`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxlm import sharding
from jaxlm.nn import attention, blocks, ffn, masks, norms, stack
from jaxlm.nn import embed as embed_lib
from jaxlm.nn import positions as pos_enc


# ------------------------------------------------------------------------------------------------------------
# parameters
def embed_spec(cfg) -> dict:
    """``{"tokens": [V, D]}`` plus ``{"positions": [max_len, D]}`` for learned positions."""
    e = embed_lib.spec(cfg.vocab_size, cfg.d_model, std=cfg.embed_std, dtype=cfg.param_dtype)
    if cfg.pos_emb == "learned":
        e.update(pos_enc.learned_spec(cfg.max_len, cfg.d_model, std=cfg.init_std, dtype=cfg.param_dtype))
    return e


def stack_spec(cfg, n_layers: int, *, cross: bool = False) -> dict:
    """``{"layers": [L, ...] blocks, "final_norm"}`` (the final norm when ``cfg.final_norm``)."""
    p = {"layers": stack.spec(blocks.spec(cfg, cross=cross), n_layers)}
    if cfg.final_norm:
        p["final_norm"] = norms.spec(cfg)
    return p


def head_spec(cfg) -> dict:
    """``{"lm_head": [D, V]}`` for an untied output head, else nothing (the token table is reused)."""
    if cfg.tie_embeddings:
        return {}
    return {"lm_head": embed_lib.unembed_spec(cfg.d_model, cfg.vocab_size, std=cfg.init_std,
                                              dtype=cfg.param_dtype)}


def spec(cfg) -> dict:
    """A decoder-only LM: ``embed/{tokens[, positions]}``, ``layers``, ``[final_norm]``, ``[lm_head]``."""
    return {"embed": embed_spec(cfg), **stack_spec(cfg, cfg.n_layers), **head_spec(cfg)}


def init(key: jax.Array, cfg, mesh=None) -> dict:
    """Draw the decoder-only LM's parameters (sharded over ``mesh`` when given)."""
    return sharding.init(key, spec(cfg), mesh)


def init_cache(cfg, batch: int, max_len: int, dtype=None, n_layers: int | None = None) -> dict:
    """Zeroed KV cache ``{"self": {"k","v": [L, B, S_max, G, K]}}`` (L = ``n_layers`` or ``cfg.n_layers``)."""
    dtype = dtype or cfg.dtype
    shape = (n_layers or cfg.n_layers, batch, max_len, cfg.kv_heads, cfg.head_dim)
    return {"self": {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}}


# ------------------------------------------------------------------------------------------------------------
# the pieces
def check_length(T: int, cfg, role: str = "") -> None:
    """A sequence longer than ``max_len`` is an error: learned tables would silently clamp, and
    RoPE/sinusoidal/ALiBi would run at positions never trained. ``role`` ("source", "target") names it."""
    if T > cfg.max_len:
        raise ValueError(f"{role or 'sequence'} length {T} exceeds max_len={cfg.max_len}: truncate the "
                         f"{role or 'input'} to {cfg.max_len} tokens (or build the model with a larger max_len).")


def embed(p: dict, tokens: jax.Array, cfg, positions: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """[B, T] -> [B, T, D]: token embeddings (times sqrt(D) with ``embed_scale``) plus absolute positions
    (learned or sinusoidal; RoPE/ALiBi act in attention instead), then dropout when ``key`` is given."""
    dt = jnp.dtype(cfg.dtype)
    x = embed_lib.apply(p, tokens, dt, scale=cfg.d_model**0.5 if cfg.embed_scale else None)
    if cfg.pos_emb == "learned":
        x = x + pos_enc.learned(p, positions, dt)
    elif cfg.pos_emb == "sinusoidal":
        x = x + pos_enc.sinusoidal(positions, cfg.d_model, dt)
    x = ffn.dropout(x, cfg.dropout, key)
    return sharding.constrain(x, ("batch", "seq", "act_embed"))


def _check_cache_room(cache_index, T: int, S: int) -> None:
    """A concrete ``cache_index`` must leave room for T tokens in S slots (dynamic_update_slice would
    otherwise clamp the write silently and overwrite earlier slots). Traced indices pass through."""
    if cache_index is None:
        raise ValueError("a cache was passed without cache_index: give the cache slot of tokens[:, 0].")
    if isinstance(cache_index, jax.core.Tracer):
        return
    i = int(cache_index)
    if i < 0 or i + T > S:
        raise ValueError(f"cache_index={i} with {T} new tokens does not fit the cache's {S} slots: allocate a "
                         f"cache with max_len >= {i + T} (init_cache(cfg, batch, max_len)).")


def cache_slots(cache: dict) -> int:
    """Slots S of a KV cache: stacked ``[L, B, S, G, K]`` leaves, or a per-layer list of ``[N, S, K]``."""
    k = cache["self"]["k"] if isinstance(cache["self"], dict) else cache["self"][0]["k"]
    return k.shape[-3] if k.ndim == 5 else k.shape[1]


def causal_mask(B: int, T: int, *, segment_ids=None, kv_valid=None, cache: dict | None = None,
                cache_index=None, window: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(slots [B, T], mask [B|1, 1, T, S]) for causal self-attention: without a cache over the T tokens
    (``segment_ids`` keep packed sequences apart); with one, the tokens sit at slots ``cache_index + t`` and
    attend to every filled slot up to their own. ``kv_valid`` [B, S] masks padding slots. ``window`` W adds
    the sliding window over slots (key slot > query slot - W): within a packed segment or a left-padded row
    slot distances are position distances."""
    if cache is None:
        slots = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
        return slots, masks.make_mask(T, causal=True, q_segment_ids=segment_ids, kv_valid=kv_valid, window=window)
    S = cache_slots(cache)
    _check_cache_room(cache_index, T, S)
    slots = jnp.broadcast_to((cache_index + jnp.arange(T))[None], (B, T))
    return slots, masks.make_mask(T, S, causal=True, q_positions=slots, kv_positions=jnp.arange(S)[None],
                                  kv_valid=kv_valid, window=window)


def run_layers(layers, x: jax.Array, cfg, *, mask=None, positions=None, enc=None, enc_mask=None,
               cache: dict | None = None, cache_index=None, key: jax.Array | None = None,
               return_weights: bool = False, block_fn: Callable = blocks.apply,
               local_mask=None, bias: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """The layer loop: ``x`` [B, T, D] through every block -> (x, ys).

    ``local_mask``: the sliding-window self-attention mask, used instead of ``mask`` by the layers
    ``cfg.local_layers`` marks (required when any is marked). Under ``lax.scan`` each layer's choice is a
    scanned boolean (a select between the two masks); over a list of layers it is a Python bool.

    ``layers``: the stacked block parameters (scanned, or looped with ``cfg.scan_layers=False``) or a list
    of per-layer trees. ``cache``: ``{"self": ..., ["cross": ...]}`` with stacked leaves (or per-layer lists,
    matching ``layers``). ys holds ``cache`` (the updated cache, same layout) and, with
    ``return_weights``, ``weights`` / ``cross_weights`` stacked over layers. ``bias`` [B|1, H, T, S] is one
    self-attention score bias shared by every layer (T5's relative position bias, computed once).
    """
    per_layer = isinstance(layers, list)
    n = len(layers) if per_layer else jax.tree.leaves(layers)[0].shape[0]
    keys = None if key is None else jax.random.split(key, n)
    local = getattr(cfg, "local_layers", (False,) * n)
    local = local if len(local) == n else (False,) * n  # a stack that is not the cfg's layers has no windows
    if any(local) and local_mask is None:
        raise ValueError(f"{type(cfg).__name__} has sliding-window layers (sliding_window={cfg.sliding_window}) "
                         f"but this stack runs without a causal window mask: sliding windows are only "
                         f"supported in causal decoders; set sliding_window=None.")
    if all(local):  # every layer local (Mistral): one mask, nothing to select
        mask, local = local_mask, (False,) * n
    flags = (local if per_layer else jnp.asarray(local)) if any(local) else None
    if per_layer:
        xs = [(None if keys is None else keys[i], None if cache is None else {c: cache[c][i] for c in cache},
               None if flags is None else flags[i]) for i in range(n)]
    else:
        xs = (keys, cache, flags)

    def body(p, h, layer_xs):
        k, c, is_local = layer_xs
        m = mask
        if is_local is not None:
            m = (local_mask if is_local else mask) if isinstance(is_local, bool) else jnp.where(is_local, local_mask, mask)
        h, aux = block_fn(p, h, cfg, mask=m, positions=positions, enc=enc, enc_mask=enc_mask, cache=c,
                          cache_index=cache_index, key=k, return_weights=return_weights,
                          **({} if bias is None else {"bias": bias}))
        out = {}
        if c is not None:
            out["cache"] = aux["cache"]["self"]  # cross-attention keys/values never change: not re-emitted
        if return_weights:
            out.update({w: aux[w] for w in ("weights", "cross_weights") if w in aux})
        if "moe" in aux:  # router statistics of a mixture-of-experts FFN, stacked over layers
            out["moe"] = aux["moe"]
        return h, out

    remat = stack.resolve_remat(cfg.remat, attention.platform())
    x, ys = stack.apply(body, layers, x, xs, scan=cfg.scan_layers, remat=remat)
    if per_layer:
        ys = {k: [y[k] for y in ys] for k in ys[0]}
        ys.update({w: jnp.stack(ys[w]) for w in ("weights", "cross_weights") if w in ys})
        if "moe" in ys:
            ys["moe"] = jax.tree.map(lambda *a: jnp.stack(a), *ys["moe"])
    if cache is not None:
        ys["cache"] = {**cache, "self": ys["cache"]}
    return x, ys


def logits(params: dict, x: jax.Array, cfg) -> jax.Array:
    """Final hidden [B, T, D] -> float32 logits [B, T, V] (tied to the token table, or the untied head),
    soft-capped to ``cap * tanh(logits / cap)`` when ``cfg.final_logit_softcap`` is set (Gemma 2; the cap is
    applied in float32, after the cast, as transformers does on its float32 logits)."""
    out = embed_lib.attend(params["embed"], x) if cfg.tie_embeddings else embed_lib.unembed(params["lm_head"], x)
    out = out.astype(jnp.float32)
    cap = getattr(cfg, "final_logit_softcap", None)
    if cap is not None:
        out = softcap(out, cap)
    return out


def softcap(x: jax.Array, cap: float) -> jax.Array:
    """``cap * tanh(x / cap)``: a smooth clamp of ``x`` into (-cap, cap) (Gemma 2's logit soft-capping)."""
    return cap * jnp.tanh(x / cap)


# ------------------------------------------------------------------------------------------------------------
# the decoder
def decode(
    params: dict,
    stack_params: dict,
    tokens: jax.Array,
    cfg,
    *,
    enc: jax.Array | None = None,
    enc_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    kv_valid: jax.Array | None = None,
    cache: dict | None = None,
    cache_index: jax.Array | int | None = None,
    layers: list | None = None,
    key: jax.Array | None = None,
    return_aux: bool = False,
    return_weights: bool = False,
    return_hidden: bool = False,
    block_fn: Callable = blocks.apply,
    role: str = "",
):
    """The causal decoder: tokens [B, T] -> logits [B, T, V] float32.

    ``params`` holds ``embed`` (and ``lm_head`` when untied); ``stack_params`` holds ``layers`` and
    ``final_norm`` (the same tree for a decoder-only LM). ``enc`` [B, S, D] / ``enc_mask`` add
    cross-attention (or a ``cache["cross"]`` computed once). ``positions`` [B, T] default to the token
    slots; ``segment_ids`` [B, T] keep packed sequences apart; ``key`` enables dropout. Incremental
    decoding: ``cache`` and ``cache_index`` (the slot of ``tokens[:, 0]``); ``kv_valid`` [B, S] marks slots
    holding real tokens (left padding); ``layers`` (a list of per-layer trees) replaces the stacked layers.
    ``role`` ("target") names the tokens in error messages. See the module docstring for the return
    convention.
    """
    embed_lib.check_tokens(tokens, cfg.vocab_size, f"{role} token ids".lstrip())
    B, T = tokens.shape
    if cache is None:
        check_length(T, cfg, role)
    slots, mask = causal_mask(B, T, segment_ids=segment_ids, kv_valid=kv_valid, cache=cache,
                              cache_index=cache_index)
    local_mask = None
    if any(getattr(cfg, "local_layers", ())):
        local_mask = causal_mask(B, T, segment_ids=segment_ids, kv_valid=kv_valid, cache=cache,
                                 cache_index=cache_index, window=cfg.sliding_window)[1]
    pos = slots if positions is None else positions
    k_emb, k_layers = (None, None) if key is None else jax.random.split(key)
    x = embed(params["embed"], tokens, cfg, pos, k_emb)
    x, ys = run_layers(stack_params["layers"] if layers is None else layers, x, cfg, mask=mask, positions=pos,
                       enc=enc, enc_mask=enc_mask, cache=cache, cache_index=cache_index, key=k_layers,
                       return_weights=return_weights, block_fn=block_fn, local_mask=local_mask)
    if cfg.final_norm:
        x = norms.apply(stack_params["final_norm"], x, cfg)
    out = logits(params, x, cfg)
    if not (return_aux or cache is not None or return_weights or return_hidden):
        return out
    aux = {k: ys[k] for k in ("cache", "weights", "cross_weights", "moe") if k in ys}
    if return_hidden:
        aux["hidden"] = x
    return out, aux


def apply(
    params: dict,
    tokens: jax.Array,
    cfg,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    kv_valid: jax.Array | None = None,
    cache: dict | None = None,
    cache_index: jax.Array | int | None = None,
    layers: list | None = None,
    key: jax.Array | None = None,
    return_aux: bool = False,
    return_weights: bool = False,
    return_hidden: bool = False,
    block_fn: Callable = blocks.apply,
):
    """A decoder-only causal LM: tokens [B, T] int -> logits [B, T, V] float32 (:func:`decode` with the
    model's own stack and no cross-attention; same keywords and return convention)."""
    return decode(params, params, tokens, cfg, positions=positions, segment_ids=segment_ids, kv_valid=kv_valid,
                  cache=cache, cache_index=cache_index, layers=layers, key=key, return_aux=return_aux,
                  return_weights=return_weights, return_hidden=return_hidden, block_fn=block_fn)
