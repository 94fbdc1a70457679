"""A decoder-only causal language model: the shared body of GPT-2 and LLaMA.

tokens [B, T] -> embeddings (+ learned positions) -> L pre-norm blocks (causal self-attention) ->
final norm -> logits [B, T, V] (tied: x @ E^T, or an untied head).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxlm import params as P
from jaxlm import sharding
from jaxlm.nn import blocks, embed, masks, norms, positions, stack


def spec(cfg) -> dict:
    """``embed/{tokens[, positions]}``, ``layers`` (stacked blocks), ``final_norm``, ``[lm_head]``."""
    e = embed.spec(cfg)
    if cfg.pos_emb == "learned":
        e.update(positions.learned_spec(cfg))
    p = {"embed": e, "layers": stack.spec(blocks.spec(cfg), cfg.n_layers)}
    if cfg.final_norm:
        p["final_norm"] = norms.spec(cfg)
    if not cfg.tie_embeddings:
        p["lm_head"] = embed.unembed_spec(cfg)
    return p


def init(key: jax.Array, cfg, mesh=None) -> dict:
    return P.init(key, spec(cfg), mesh)


def init_cache(cfg, batch: int, max_len: int, dtype=None) -> dict:
    """Zeroed KV cache ``{"self": {"k","v": [L, B, S_max, G, K]}}``."""
    dtype = dtype or cfg.dtype
    shape = (cfg.n_layers, batch, max_len, cfg.kv_heads, cfg.head_dim)
    return {"self": {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}}


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


def embed_tokens(params: dict, tokens: jax.Array, cfg, positions_: jax.Array) -> jax.Array:
    """[B, T] -> [B, T, D]: token embeddings (scaled by sqrt(D) if configured) plus absolute positions."""
    dt = jnp.dtype(cfg.dtype)
    x = embed.apply(params["embed"], tokens, dt, scale=cfg.d_model**0.5 if cfg.embed_scale else None)
    if cfg.pos_emb == "learned":
        x = x + positions.learned(params["embed"], positions_, dt)
    elif cfg.pos_emb == "sinusoidal":
        x = x + positions.sinusoidal(positions_, cfg.d_model, dt)
    return x


def logits_from_hidden(params: dict, x: jax.Array, cfg) -> jax.Array:
    """Final hidden [B, T, D] -> float32 logits [B, T, V]."""
    if cfg.tie_embeddings:
        out = embed.attend(params["embed"], x)
    else:
        out = embed.unembed(params["lm_head"], x)
    return out.astype(jnp.float32)


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
    key: jax.Array | None = None,
    return_aux: bool = False,
    return_weights: bool = False,
    return_hidden: bool = False,
    block_fn: Callable = blocks.apply,
):
    """Causal LM forward pass.

    tokens [B, T] int -> logits [B, T, V] float32. ``positions`` [B, T] (default 0..T-1, or the cache
    slots); ``segment_ids`` [B, T] keep packed sequences apart; ``key`` enables dropout.
    Incremental decoding: pass ``cache`` (from :func:`init_cache`) and ``cache_index`` (the slot of
    ``tokens[:, 0]``); ``kv_valid`` [B, S_max] marks cache slots that hold real tokens (left padding).
    With ``return_aux`` returns (logits, aux) where aux may hold ``cache``, ``weights`` [L, B, H, T, S]
    and ``hidden`` [B, T, D].
    """
    embed.check_tokens(tokens, cfg.vocab_size)
    B, T = tokens.shape
    if cache is None:
        # learned tables would silently clamp; RoPE/sinusoidal/ALiBi run but were never trained that far
        if T > cfg.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len={cfg.max_len}: truncate the input to "
                             f"{cfg.max_len} tokens (or build the model with a larger max_len).")
        slots = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
        mask = masks.make_mask(T, causal=True, q_segment_ids=segment_ids, kv_valid=kv_valid)
    else:
        S = cache["self"]["k"].shape[2]
        _check_cache_room(cache_index, T, S)
        slots = jnp.broadcast_to((cache_index + jnp.arange(T))[None], (B, T))
        mask = masks.make_mask(T, S, causal=True, q_positions=slots,
                               kv_positions=jnp.arange(S)[None], kv_valid=kv_valid)
    pos = slots if positions is None else positions
    x = embed_tokens(params, tokens, cfg, pos)
    x = sharding.constrain(x, ("batch", "seq", "act_embed"))
    if key is not None:
        key, k_emb = jax.random.split(key)
        from jaxlm.nn.ffn import dropout
        x = dropout(x, cfg.dropout, k_emb)
    layer_keys = None if key is None else jax.random.split(key, cfg.n_layers)
    layer_cache = None if cache is None else cache["self"]

    def body(p, h, xs):
        lk, lc = xs
        h, aux = block_fn(p, h, cfg, mask=mask, positions_=pos,
                          cache=None if lc is None else {"self": lc}, cache_index=cache_index,
                          key=lk, return_weights=return_weights)
        out = {}
        if lc is not None:
            out["cache"] = aux["cache"]["self"]
        if return_weights:
            out["weights"] = aux["weights"]
        return h, out

    x, ys = stack.apply(body, params["layers"], x, (layer_keys, layer_cache),
                        scan=cfg.scan_layers, remat=cfg.remat)
    if cfg.final_norm:
        x = norms.apply(params["final_norm"], x, cfg)
    logits = logits_from_hidden(params, x, cfg)
    if not (return_aux or cache is not None):
        return logits
    aux = {}
    if cache is not None:
        aux["cache"] = {"self": ys["cache"]}
    if return_weights:
        aux["weights"] = ys["weights"]
    if return_hidden:
        aux["hidden"] = x
    return logits, aux
