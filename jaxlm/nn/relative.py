"""T5's relative position bias (Raffel et al. 2020, §2.1; Shaw et al. 2018).

Each attention head adds a learned scalar to its score of (query i, key j) that depends only on the
bucket of the relative position ``j - i``. Buckets: with ``bidirectional`` (the encoder), half of them are
for keys after the query and half for keys before it; within each half, the first half of the buckets hold
the distances 0, 1, 2, ... exactly and the rest grow logarithmically up to ``max_distance``, beyond which
every distance shares the last bucket. The causal decoder (``bidirectional=False``) only sees keys at or
before the query, so all buckets go to those distances. The table is ``[num_buckets, H]``, one per stack,
computed once per forward pass and shared by every layer of that stack (as in the paper and the released
code; :func:`bias` returns the ``[B|1, H, T, S]`` array that :func:`jaxlm.nn.attention.apply` adds to its
scores).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxlm.config import ConfigError
from jaxlm.params import Param, normal


def check(num_buckets, max_distance, where: str = "relative attention") -> None:
    """Raise a ConfigError unless ``num_buckets`` is a positive integer and ``max_distance`` is at least
    ``num_buckets`` (the logarithmic buckets need room between the exact ones and ``max_distance``)."""
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets <= 0:
        raise ConfigError(f"{where}: rel_buckets={num_buckets!r} must be a positive integer (T5 uses 32).")
    if isinstance(max_distance, bool) or not isinstance(max_distance, int) or max_distance < num_buckets:
        raise ConfigError(f"{where}: rel_max_distance={max_distance!r} must be an integer >= rel_buckets="
                          f"{num_buckets} (T5 uses 128 with 32 buckets); raise it or lower rel_buckets.")


def buckets(relative: jax.Array, *, bidirectional: bool, num_buckets: int, max_distance: int) -> jax.Array:
    """Bucket ids in ``[0, num_buckets)`` of relative positions ``relative = key - query`` (any int shape)."""
    rel = jnp.asarray(relative, jnp.int32)
    out = jnp.zeros_like(rel)
    n = num_buckets
    if bidirectional:
        n //= 2
        out = out + (rel > 0).astype(jnp.int32) * n  # keys after the query use the upper half
        dist = jnp.abs(rel)
    else:
        dist = jnp.maximum(-rel, 0)  # later keys are masked anyway; they share bucket 0
    exact = n // 2
    # log-spaced buckets for distances in [exact, max_distance); float32 as in the reference code
    large = exact + (jnp.log(jnp.maximum(dist, 1).astype(jnp.float32) / exact) / math.log(max_distance / exact)
                     * (n - exact)).astype(jnp.int32)
    large = jnp.minimum(large, n - 1)
    return out + jnp.where(dist < exact, dist, large)


def spec(num_buckets: int, n_heads: int, *, std: float = 0.02, dtype="float32") -> dict:
    """``{"table": [num_buckets, H]}``: one learned scalar per (bucket, head)."""
    return {"table": Param((num_buckets, n_heads), (None, "heads"), normal(std), jnp.dtype(dtype))}


def bias(p: dict, q_positions: jax.Array, k_positions: jax.Array, *, bidirectional: bool, num_buckets: int,
         max_distance: int) -> jax.Array:
    """The score bias ``[B|1, H, T, S]`` (float32) for queries at ``q_positions`` [B|1, T] and keys at
    ``k_positions`` [B|1, S]."""
    rel = k_positions[:, None, :] - q_positions[:, :, None]  # [B, T, S]
    b = buckets(rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    values = jnp.take(p["table"].astype(jnp.float32), b, axis=0)  # [B, T, S, H]
    return values.transpose(0, 3, 1, 2)
