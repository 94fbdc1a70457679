"""Boolean attention masks, shape [B, 1, T, S]; True means "may attend"."""

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
) -> jax.Array | None:
    """Combine causal, segment (packed sequences) and padding masks.

    - causal: key position <= query position (``q_positions`` [B, T] / ``kv_positions`` [B, S] when given,
      else 0..T-1 and 0..S-1);
    - segments: query and key belong to the same packed sequence (``*_segment_ids`` [B, T] / [B, S]);
    - padding: ``kv_valid`` [B, S] is True on real keys.
    Returns a bool mask broadcastable to [B, H, T, S], or None when nothing is masked.
    """
    kv_len = q_len if kv_len is None else kv_len
    mask = None

    def _and(m, new):
        return new if m is None else jnp.logical_and(m, new)

    if causal:
        qp = jnp.arange(q_len)[None] if q_positions is None else q_positions
        kp = jnp.arange(kv_len)[None] if kv_positions is None else kv_positions
        mask = _and(mask, kp[:, None, None, :] <= qp[:, None, :, None])
    if q_segment_ids is not None:
        ks = q_segment_ids if kv_segment_ids is None else kv_segment_ids
        mask = _and(mask, q_segment_ids[:, None, :, None] == ks[:, None, None, :])
    if kv_valid is not None:
        mask = _and(mask, kv_valid.astype(bool)[:, None, None, :])
    return mask
