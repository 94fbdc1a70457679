"""Boolean attention masks, shape [B, 1, T, S]; True means "may attend".

Sliding-window (local) attention (Child et al. 2019; Beltagy et al. 2020; Mistral 7B, Jiang et al. 2023) is a
mask here: with window W a query at position i sees keys j with i - W < j (W keys including itself when
causal), transformers' ``kv_idx > q_idx - sliding_window``. Every attention implementation takes masks, so
the window works on all of them, combined with padding and packed segments by a logical and.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def make_mask(
    q_len: int,
    kv_len: int | None = None,
    *,
    causal: bool = False,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    kv_valid: jax.Array | None = None,
    window: int | None = None,
) -> jax.Array | None:
    """Combine causal, segment (packed sequences) and padding masks.

    - causal: key position <= query position (``q_positions`` [B, T] / ``kv_positions`` [B, S] when given,
      else 0..T-1 and 0..S-1);
    - segments: query and key belong to the same packed sequence (``*_segment_ids`` [B, T] / [B, S]);
    - padding: ``kv_valid`` [B, S] is True on real keys;
    - sliding window: with ``window`` W, key position > query position - W (:func:`window_mask`; for a
      bidirectional mask also key position < query position + W).
    Returns a bool mask broadcastable to [B, H, T, S], or None when nothing is masked.
    """
    kv_len = q_len if kv_len is None else kv_len
    mask = None

    def _and(m, new):
        return new if m is None else jnp.logical_and(m, new)

    qp = jnp.arange(q_len)[None] if q_positions is None else q_positions
    kp = jnp.arange(kv_len)[None] if kv_positions is None else kv_positions
    if causal:
        mask = _and(mask, kp[:, None, None, :] <= qp[:, None, :, None])
    if window is not None:
        mask = _and(mask, window_mask(qp, kp, window, causal=causal))
    if q_segment_ids is not None:
        ks = q_segment_ids if kv_segment_ids is None else kv_segment_ids
        mask = _and(mask, q_segment_ids[:, None, :, None] == ks[:, None, None, :])
    if kv_valid is not None:
        mask = _and(mask, kv_valid.astype(bool)[:, None, None, :])
    return mask


def window_mask(q_positions: jax.Array, kv_positions: jax.Array, window: int, *, causal: bool = True) -> jax.Array:
    """[B, 1, T, S] bool: key j is within ``window`` of query i, i.e. j > i - window (and, when not
    ``causal``, also j < i + window). ``q_positions`` [B|1, T], ``kv_positions`` [B|1, S]: positions or cache
    slots (for a left-padded cache the slot distance equals the position distance)."""
    if window <= 0:
        raise ValueError(f"window={window} must be a positive number of keys.")
    d = q_positions[:, None, :, None] - kv_positions[:, None, None, :]
    return (d < window) if causal else (jnp.abs(d) < window)
