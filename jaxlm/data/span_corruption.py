"""T5's span-corruption objective (Raffel et al. 2020, §3.1.4 and §3.3.4), traceable under ``jax.jit``.

From a block of L tokens, ``round(L * noise_density)`` tokens (15 %) are dropped in ``round(noise /
mean_span_length)`` spans (mean length 3). The **inputs** are the block with each dropped span replaced by
one sentinel id; the **targets** are the dropped spans, each preceded by its sentinel; both end with EOS::

    tokens   Thank you for inviting me to your party last week
    inputs   Thank you <X> me to your party <Y> </s>
    targets  <X> for inviting <Y> last week </s>

Sentinels are taken from the top of the vocabulary, in order: the first span's is ``vocab_size - 1``, the
next ``vocab_size - 2``, ... (T5's ``<extra_id_0>``, ``<extra_id_1>``, ...). As in the released code
(``random_spans_noise_mask`` of text-to-text-transfer-transformer), the span lengths are a uniformly random
segmentation of the noise tokens into the span count (every span non-empty), likewise for the kept tokens,
and the block starts with kept tokens and ends with a noise span, so the number of noise tokens and spans, and hence the input and
target lengths, are fixed by L: fixed shapes, so a batch is corrupted inside the jitted train step from the
step's key (deterministic from the seed, like MLM masking). The targets end with EOS after the last span
(the paper's figure adds a final sentinel there; the released code does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class Lengths:
    """What a block of ``length`` tokens becomes: noise tokens, spans, and the inputs / targets lengths
    (each with its EOS)."""

    length: int
    noise: int
    spans: int

    @property
    def inputs(self) -> int:
        return self.length - self.noise + self.spans + 1

    @property
    def targets(self) -> int:
        return self.noise + self.spans + 1


def lengths(length: int, noise_density: float = 0.15, mean_span_length: float = 3.0) -> Lengths:
    """Noise-token and span counts of a block of ``length`` tokens (T5's rounding: at least one noise token
    and one span, at least one kept token)."""
    if length < 2:
        raise ValueError(f"span corruption needs blocks of at least 2 tokens, got {length}.")
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density={noise_density!r} must be in (0, 1) (T5: 0.15).")
    if not mean_span_length >= 1.0:
        raise ValueError(f"mean_span_length={mean_span_length!r} must be >= 1 (T5: 3).")
    noise = min(max(int(round(length * noise_density)), 1), length - 1)
    spans = max(int(round(noise / mean_span_length)), 1)
    spans = min(spans, noise, length - noise)  # every span (and every kept stretch) holds at least one token
    return Lengths(length, noise, spans)


def _segment(key: jax.Array, n_items: int, n_segments: int) -> jax.Array:
    """A uniformly random split of ``n_items`` into ``n_segments`` non-empty parts -> lengths [n_segments]."""
    cut = jnp.arange(n_items - 1) < n_segments - 1  # n_segments - 1 cut points among the n_items - 1 gaps
    first = jnp.concatenate([jnp.zeros((1,), jnp.int32), jax.random.permutation(key, cut).astype(jnp.int32)])
    seg = jnp.cumsum(first)  # [n_items] segment of each item
    return jnp.zeros((n_segments,), jnp.int32).at[seg].add(1)


def noise_mask(key: jax.Array, n: Lengths) -> jax.Array:
    """[L] bool, True on noise tokens: ``n.spans`` noise spans interleaved with as many kept stretches,
    starting with a kept one."""
    k_noise, k_keep = jax.random.split(key)
    noise_len = _segment(k_noise, n.noise, n.spans)
    keep_len = _segment(k_keep, n.length - n.noise, n.spans)
    span_len = jnp.stack([keep_len, noise_len], 1).reshape(-1)  # [2 * spans]: keep, noise, keep, noise, ...
    starts = jnp.cumsum(span_len)[:-1]
    span_id = jnp.cumsum(jnp.zeros((n.length,), jnp.int32).at[starts].add(1))  # [L]
    return span_id % 2 == 1


def _compact(values: jax.Array, keep: jax.Array, size: int, fill: int) -> jax.Array:
    """``values[keep]`` moved to the front of a length-``size`` array (``keep.sum() == size`` here)."""
    idx = jnp.where(keep, jnp.cumsum(keep) - 1, size)  # dropped tokens go to a slot past the end
    return jnp.full((size + 1,), fill, values.dtype).at[idx].set(values)[:size]


def _corrupt_row(key, tokens, n: Lengths, vocab_size: int, eos_id: int):
    noise = noise_mask(key, n)
    prev = jnp.concatenate([jnp.zeros((1,), bool), noise[:-1]])
    noise_start = noise & ~prev  # first token of each noise span
    keep_start = ~noise & prev  # first kept token after a noise span
    sentinel = vocab_size - jnp.cumsum(noise_start)  # [L] span k (1-based) -> vocab_size - k
    # inputs: kept tokens, and one sentinel where each noise span starts
    inp = _compact(jnp.where(noise_start, sentinel, tokens), ~noise | noise_start, n.inputs - 1, eos_id)
    # targets: each noise span preceded by its sentinel (the kept stretch before it becomes that sentinel)
    t_sent = vocab_size - jnp.cumsum(keep_start) - 1  # sentinel of the span that follows each kept stretch
    first_keep = ~noise & ~jnp.concatenate([jnp.zeros((1,), bool), ~noise[:-1]])  # first token of a kept stretch
    tgt = _compact(jnp.where(first_keep, t_sent, tokens), noise | first_keep, n.targets - 1, eos_id)
    eos = jnp.full((1,), eos_id, tokens.dtype)
    return jnp.concatenate([inp.astype(tokens.dtype), eos]), jnp.concatenate([tgt.astype(tokens.dtype), eos])


def corrupt(key: jax.Array, tokens: jax.Array, *, vocab_size: int, eos_id: int, noise_density: float = 0.15,
            mean_span_length: float = 3.0) -> tuple[jax.Array, jax.Array]:
    """Span-corrupt every row of ``tokens`` [B, L] (one key per row, split from ``key``) -> (inputs
    [B, L_in], targets [B, L_tgt]) with the lengths of :func:`lengths`. Sentinels are ``vocab_size - 1``,
    ``vocab_size - 2``, ... in span order; ``eos_id`` ends both."""
    n = lengths(tokens.shape[1], noise_density, mean_span_length)
    keys = jax.random.split(key, tokens.shape[0])
    return jax.vmap(lambda k, t: _corrupt_row(k, t, n, vocab_size, eos_id))(keys, tokens)
