"""Token embeddings, with a tied (``x @ E^T``) or untied output projection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import sharding
from jaxlm.params import Param, normal, zeros

TOKENS_AXES = ("vocab", "embed")  # logical axes of the [V, D] table (spec and lookup)


def spec(vocab_size: int, d_model: int, *, std: float = 0.02, dtype="float32") -> dict:
    """``{"tokens": [V, D]}`` drawn from normal(std)."""
    return {"tokens": Param((vocab_size, d_model), TOKENS_AXES, normal(std), jnp.dtype(dtype))}


def unembed_spec(d_model: int, vocab_size: int, *, std: float = 0.02, dtype="float32", bias: bool = False) -> dict:
    """Untied output projection ``{"w": [D, V]}`` (+ ``{"b": [V]}``)."""
    dt = jnp.dtype(dtype)
    p = {"w": Param((d_model, vocab_size), ("embed", "vocab"), normal(std), dt)}
    if bias:
        p["b"] = Param((vocab_size,), ("vocab",), zeros, dt)
    return p


def check_tokens(tokens, vocab_size: int, what: str = "token ids", fix: str | None = None) -> None:
    """Raise a ValueError when concrete ``tokens`` fall outside ``[0, vocab_size)``; tracers pass through
    (values are unknown under jit: entry points that take user data call this before jitting). ``fix``
    replaces the default advice (which is about tokenizers and ``vocab_size``)."""
    if isinstance(tokens, jax.core.Tracer):
        return
    arr = np.asarray(tokens)
    if arr.size == 0:
        raise ValueError(f"{what} are empty: give at least one token.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {arr.dtype}.")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        bad = hi if hi >= vocab_size else lo
        fix = fix or (f"the tokenizer and the model's vocab_size disagree (use a tokenizer with at most "
                      f"{vocab_size} tokens or raise model.vocab_size)")
        raise ValueError(f"{what} contain {bad}, outside [0, {vocab_size}): {fix}.")


def apply(p: dict, tokens: jax.Array, dtype=jnp.float32, scale: float | None = None) -> jax.Array:
    """Look up ``tokens`` [B, T] -> [B, T, D], optionally multiplied by ``scale`` (the paper's sqrt(d))."""
    # an FSDP-sharded table is gathered first (see sharding.gathered): a lookup into it otherwise
    # makes XLA replicate the whole activation
    x = jnp.take(sharding.gathered(p["tokens"], TOKENS_AXES), tokens, axis=0).astype(dtype)
    return x * scale if scale is not None else x


def attend(p: dict, x: jax.Array) -> jax.Array:
    """Tied output logits: ``x`` [B, T, D] @ tokens^T -> [B, T, V]."""
    return jnp.einsum("BTD,VD->BTV", x, p["tokens"].astype(x.dtype))


def unembed(p: dict, x: jax.Array) -> jax.Array:
    """Untied output logits: ``x`` [B, T, D] @ w -> [B, T, V]."""
    y = jnp.einsum("BTD,DV->BTV", x, p["w"].astype(x.dtype))
    return y + p["b"].astype(x.dtype) if "b" in p else y
