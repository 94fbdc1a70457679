"""Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus) sampling.

The order follows Hugging Face's ``generate``: divide by the temperature, keep the ``top_k`` largest logits,
then keep the smallest set of most-likely tokens whose probability (after top-k) reaches ``top_p``;
sample from what is left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class Sampler:
    """The static (compile-time) part of a sampling rule; temperature and top_p values are traced
    arguments, so changing them does not recompile."""

    greedy: bool = False
    top_k: int | None = None
    top_p: bool = False  # whether nucleus filtering runs at all
    vocab_limit: int | None = None  # sample only ids below this (the tokenizer's); None = the whole vocabulary


def check_vocab_limit(cfg, vocab_limit: int | None) -> int | None:
    """``vocab_limit`` checked against ``cfg.vocab_size``; None when it does not restrict anything."""
    if vocab_limit is None:
        return None
    if isinstance(vocab_limit, bool) or not isinstance(vocab_limit, int | np.integer) or vocab_limit < 1:
        raise ValueError(f"vocab_limit={vocab_limit!r} must be a positive integer (the tokenizer's number of "
                         f"ids) or None.")
    if vocab_limit > cfg.vocab_size:
        raise ValueError(f"vocab_limit={vocab_limit} exceeds the model's vocab_size={cfg.vocab_size}: the "
                         f"tokenizer is not this model's; use the model's own tokenizer.")
    return None if vocab_limit == cfg.vocab_size else int(vocab_limit)


def make(cfg, *, temperature: float, top_k: int | None, top_p: float | None, greedy: bool,
         vocab_limit: int | None = None) -> Sampler:
    """Validate sampling arguments (errors name the fix) and return the static :class:`Sampler`.
    ``temperature == 0`` means greedy. ``vocab_limit``: only ids below it are ever chosen (a model whose
    embedding table is larger than its tokenizer would otherwise produce ids that decode to nothing)."""
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature={temperature!r} must be >= 0 and finite (1.0 = the model's distribution; "
                         f"0 or greedy=True = always the most likely token).")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be a positive integer (or None to disable top-k filtering).")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, int | float)
                              or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p={top_p!r} must be in (0, 1] (e.g. 0.9; None or 1.0 disables nucleus "
                         f"filtering).")
    limit = check_vocab_limit(cfg, vocab_limit)
    if greedy or temperature == 0:
        return Sampler(greedy=True, vocab_limit=limit)
    k = None if top_k is None or top_k >= (limit or cfg.vocab_size) else int(top_k)
    return Sampler(top_k=k, top_p=top_p is not None and top_p < 1.0, vocab_limit=limit)


def restrict(logits: jax.Array, vocab_limit: int | None) -> jax.Array:
    """``logits`` [..., V] with the ids at and above ``vocab_limit`` set to -inf (unchanged when None)."""
    if vocab_limit is None:
        return logits
    return jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)


def filter_logits(logits: jax.Array, sampler: Sampler, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """logits [B, V] -> logits [B, V] scaled by 1/temperature with excluded tokens set to -inf."""
    logits = logits.astype(jnp.float32) / temperature
    if sampler.top_k is not None:
        kth = jax.lax.top_k(logits, sampler.top_k)[0][:, -1:]  # [B, 1]: the k-th largest logit
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampler.top_p:
        srt = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V] descending
        probs = jax.nn.softmax(srt, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # keep token i while the mass of the tokens ranked above it is < top_p: the smallest nucleus whose
        # mass reaches top_p (the most likely token is always kept)
        keep = mass_before < top_p
        threshold = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)  # [B, 1]
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def argmax(logits: jax.Array) -> jax.Array:
    """[B, V] -> [B] int32, the first index of the maximum (as ``jnp.argmax``). Two plain reductions, because
    XLA:CPU runs ``jnp.argmax``'s paired (value, index) reduction several times slower."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    iota = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(logits == top, iota, logits.shape[-1]), axis=-1).astype(jnp.int32)


def sample(logits: jax.Array, key: jax.Array, sampler: Sampler, temperature: jax.Array,
           top_p: jax.Array) -> jax.Array:
    """logits [B, V] -> token ids [B] int32."""
    logits = restrict(logits, sampler.vocab_limit)
    if sampler.greedy:
        return argmax(logits)
    logits = filter_logits(logits, sampler, temperature, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
