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


ROPE_TYPES = ("default", "linear", "llama3")


def rope_frequencies(
    head_dim: int,
    theta: float = 10000.0,
    *,
    rope_type: str = "default",
    factor: float = 1.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_max_len: int = 8192,
) -> jax.Array:
    """RoPE inverse frequencies [K/2]: inv_freq[i] = theta^(-2i/K), then scaled by ``rope_type``:

    - ``"default"``: unchanged;
    - ``"linear"`` (position interpolation, Chen et al. 2023): inv_freq / factor, i.e. positions / factor;
    - ``"llama3"`` (Llama 3.1, Meta 2024): with wavelength w = 2 pi / inv_freq and L = ``original_max_len``,
      frequencies with w > L / low_freq_factor are divided by ``factor``, those with w < L / high_freq_factor
      are kept, and those in between interpolate smoothly, s = (L / w - low) / (high - low):
      (1 - s) * inv_freq / factor + s * inv_freq.

    Computed in float32 in the same order of operations as transformers' ``modeling_rope_utils`` (tested
    equal to its ``ROPE_INIT_FUNCTIONS``); neither variant rescales cos/sin (attention factor 1).
    """
    inv = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    inv = inv.astype(np.float32)
    if rope_type == "linear":
        inv = inv / np.float32(factor)
    elif rope_type == "llama3":
        low_wavelen = original_max_len / low_freq_factor
        high_wavelen = original_max_len / high_freq_factor
        wavelen = np.float32(2 * math.pi) / inv
        scaled = np.where(wavelen > low_wavelen, inv / np.float32(factor), inv)
        smooth = (original_max_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    elif rope_type != "default":
        raise ValueError(f"rope_type={rope_type!r} is not implemented; choose one of {ROPE_TYPES}.")
    return jnp.asarray(inv.astype(np.float32))


def rotate_half(x: jax.Array) -> jax.Array:
    """[x1, x2] -> [-x2, x1] over the last axis (the HF LLaMA convention, not interleaved pairs)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float = 10000.0,
               inv_freq: jax.Array | None = None) -> jax.Array:
    """Rotate ``x`` [B, T, N, K] by angle pos * inv_freq: x * cos + rotate_half(x) * sin.

    ``positions`` is [B, T]; ``inv_freq`` [K/2] (default: plain :func:`rope_frequencies` of ``theta``; pass
    scaled ones for RoPE scaling). cos/sin are computed in float32, as HF does, then cast to x's dtype.
    """
    inv = rope_frequencies(x.shape[-1], theta) if inv_freq is None else inv_freq  # [K/2]
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
