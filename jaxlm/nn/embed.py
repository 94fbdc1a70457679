"""Token embeddings, with a tied (``x @ E^T``) or untied output projection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import sharding
from jaxlm.nn import quant
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
    (values are unknown under jit: entry points that take user data call this before jitting; under jit
    :func:`apply` embeds such ids as zeros and :func:`count_out_of_range` counts them). ``fix``
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


def count_out_of_range(tokens: jax.Array, vocab_size: int) -> jax.Array:
    """The number of ``tokens`` outside ``[0, vocab_size)``, as an int32 scalar; traceable, so a jitted
    step can report what :func:`check_tokens` cannot see under jit."""
    return jnp.sum((tokens < 0) | (tokens >= vocab_size), dtype=jnp.int32)


def apply(p: dict, tokens: jax.Array, dtype=jnp.float32, scale: float | None = None) -> jax.Array:
    """Look up ``tokens`` [B, T] -> [B, T, D], optionally multiplied by ``scale`` (the paper's sqrt(d)).

    An id outside ``[0, V)`` (which :func:`check_tokens` rejects for concrete arrays, but a traced one cannot
    be checked) embeds as a zero vector: never NaN, and a negative id never wraps around to the end of the
    table. The train step counts such ids (:func:`count_out_of_range`) and the training loop stops on them.
    """
    if isinstance(p["tokens"], quant.QArray):  # weight-only quantized table (jaxlm.nn.quant)
        x = quant.take(p["tokens"], tokens, dtype)
        return x * scale if scale is not None else x
    table = sharding.gathered(p["tokens"], TOKENS_AXES)
    # an FSDP-sharded table is gathered first (see sharding.gathered): a lookup into it otherwise
    # makes XLA replicate the whole activation. Negative ids are sent to V, past the end, because
    # jnp.take wraps them around even with mode="fill".
    tokens = jnp.where(tokens < 0, table.shape[0], tokens)
    x = jnp.take(table, tokens, axis=0, mode="fill", fill_value=0).astype(dtype)
    return x * scale if scale is not None else x


def attend(p: dict, x: jax.Array) -> jax.Array:
    """Tied output logits: ``x`` [B, T, D] @ tokens^T -> [B, T, V]."""
    if isinstance(p["tokens"], quant.QArray):
        return quant.einsum("BTD,VD->BTV", x, p["tokens"])
    return jnp.einsum("BTD,VD->BTV", x, p["tokens"].astype(x.dtype))


def unembed(p: dict, x: jax.Array) -> jax.Array:
    """Untied output logits: ``x`` [B, T, D] @ w -> [B, T, V]."""
    w = p["w"]
    y = quant.einsum("BTD,DV->BTV", x, w) if isinstance(w, quant.QArray) else jnp.einsum("BTD,DV->BTV", x, w.astype(x.dtype))
    return y + p["b"].astype(x.dtype) if "b" in p else y
