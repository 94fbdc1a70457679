"""Position information: sinusoidal (Vaswani et al. §3.5), learned, RoPE (Su et al.) and ALiBi (Press et al.)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import sharding
from jaxlm.params import Param, normal

POSITIONS_AXES = (None, "embed")  # logical axes of the learned [max_len, D] table (spec and lookup)
POS_EMB = ("sinusoidal", "learned", "rope", "alibi", "none")


def sinusoidal(positions: jax.Array, d_model: int, dtype=jnp.float32) -> jax.Array:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).

    ``positions`` [..., T] (ints) -> [..., T, D]; sin and cos interleave on even/odd channels as in the paper.
    """
    i = jnp.arange(d_model // 2, dtype=jnp.float32)
    inv = 1.0 / (10000.0 ** (2.0 * i / d_model))  # [D/2]
    ang = positions.astype(jnp.float32)[..., None] * inv  # [..., T, D/2]
    pe = jnp.stack([jnp.sin(ang), jnp.cos(ang)], axis=-1).reshape(*ang.shape[:-1], d_model)
    return pe.astype(dtype)


def learned_spec(max_len: int, d_model: int, *, std: float = 0.02, dtype="float32") -> dict:
    """``{"positions": [max_len, D]}`` drawn from normal(std)."""
    return {"positions": Param((max_len, d_model), POSITIONS_AXES, normal(std), jnp.dtype(dtype))}


def learned(p: dict, positions: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Look up learned position vectors: ``positions`` [B, T] -> [B, T, D]."""
    return jnp.take(sharding.gathered(p["positions"], POSITIONS_AXES), positions, axis=0).astype(dtype)


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> jax.Array:
    """inv_freq[i] = theta^(-2i/K) for i < K/2."""
    return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def rotate_half(x: jax.Array) -> jax.Array:
    """[x1, x2] -> [-x2, x1] over the last axis (the HF LLaMA convention, not interleaved pairs)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
    """Rotate ``x`` [B, T, N, K] by angle pos * inv_freq: x * cos + rotate_half(x) * sin.

    ``positions`` is [B, T]. cos/sin are computed in float32, as HF does, then cast to x's dtype.
    """
    inv = rope_frequencies(x.shape[-1], theta)  # [K/2]
    ang = positions.astype(jnp.float32)[..., None] * inv  # [B, T, K/2]
    ang = jnp.concatenate([ang, ang], axis=-1)[:, :, None, :]  # [B, T, 1, K]
    cos, sin = jnp.cos(ang).astype(x.dtype), jnp.sin(ang).astype(x.dtype)
    return x * cos + rotate_half(x) * sin


def alibi_slopes(n_heads: int) -> np.ndarray:
    """Head slopes: the geometric sequence 2^(-8/n), 2^(-16/n), ... (with the paper's interpolation for
    head counts that are not powers of two)."""

    def pow2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return np.asarray(pow2(n_heads), np.float32)
    closest = 2 ** math.floor(math.log2(n_heads))
    return np.asarray(pow2(closest) + pow2(2 * closest)[0::2][: n_heads - closest], np.float32)


def alibi_bias(n_heads: int, q_positions: jax.Array, kv_positions: jax.Array) -> jax.Array:
    """Additive attention bias -slope_h * |i - j| -> [B, H, T, S] (for causal attention j <= i, so this is
    the paper's -slope * (i - j))."""
    slopes = jnp.asarray(alibi_slopes(n_heads))  # [H]
    dist = jnp.abs(q_positions[:, :, None] - kv_positions[:, None, :]).astype(jnp.float32)  # [B, T, S]
    return -slopes[None, :, None, None] * dist[:, None]
