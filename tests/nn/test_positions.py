"""Positions: sinusoidal (paper formula), learned, RoPE (HF rotate-half), ALiBi slopes and bias."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import gpt2
from jaxlm.nn import positions
from jaxlm.params import init


def test_sinusoidal_matches_the_paper_formula():
    d, T = 16, 50
    pe = np.asarray(positions.sinusoidal(jnp.arange(T)[None], d))[0]
    want = np.zeros((T, d))
    for pos in range(T):
        for i in range(d // 2):
            want[pos, 2 * i] = math.sin(pos / 10000 ** (2 * i / d))
            want[pos, 2 * i + 1] = math.cos(pos / 10000 ** (2 * i / d))
    np.testing.assert_allclose(pe, want, atol=2e-5)
    assert positions.sinusoidal(jnp.arange(3)[None], d, jnp.bfloat16).dtype == jnp.bfloat16


def test_learned_positions_are_a_table_lookup():
    cfg = gpt2.Config(vocab_size=16, max_len=8, d_model=4, n_heads=2, n_layers=1, d_ff=8)
    p = init(jax.random.key(0), positions.learned_spec(cfg.max_len, cfg.d_model))
    pos = jnp.array([[3, 0, 7]])
    np.testing.assert_array_equal(positions.learned(p, pos)[0], np.asarray(p["positions"])[[3, 0, 7]])


def _np_rope(x, pos, theta=10000.0):
    """HF LLaMA's rotary embedding in numpy: cat(freqs, freqs), x*cos + rotate_half(x)*sin."""
    K = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, K, 2, dtype=np.float64) / K)
    freqs = pos[..., None].astype(np.float64) * inv_freq  # [B, T, K/2]
    emb = np.concatenate([freqs, freqs], -1)[:, :, None, :]  # [B, T, 1, K]
    x1, x2 = x[..., : K // 2], x[..., K // 2:]
    rot = np.concatenate([-x2, x1], -1)
    return x * np.cos(emb) + rot * np.sin(emb)


def test_rope_matches_hf_rotate_half_in_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 3, 8)).astype(np.float32)
    pos = np.stack([np.arange(7), np.arange(10, 17)])
    for theta in (10000.0, 500000.0):
        got = positions.apply_rope(jnp.asarray(x), jnp.asarray(pos), theta)
        np.testing.assert_allclose(got, _np_rope(x, pos, theta), atol=2e-5)
    # rotate-half pairs channel i with i + K/2, not (2i, 2i+1): an interleaved implementation differs
    got = np.asarray(positions.apply_rope(jnp.asarray(x), jnp.asarray(pos)))
    xi = x.reshape(*x.shape[:-1], 4, 2)
    ang = pos[..., None, None] * (1.0 / 10000 ** (np.arange(0, 8, 2) / 8))[None, None, None, :]
    inter = np.stack([xi[..., 0] * np.cos(ang) - xi[..., 1] * np.sin(ang),
                      xi[..., 0] * np.sin(ang) + xi[..., 1] * np.cos(ang)], -1).reshape(x.shape)
    assert not np.allclose(got, inter, atol=1e-3)


def test_rope_preserves_norms_and_scores_depend_only_on_offset():
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)

    def rot(x, p):
        return positions.apply_rope(x, jnp.array([[p]]))[0, 0, 0]

    np.testing.assert_allclose(jnp.linalg.norm(rot(q, 37)), jnp.linalg.norm(q), rtol=1e-5)
    scores = {(m, n): float(rot(q, m) @ rot(k, n)) for m, n in [(5, 2), (13, 10), (103, 100), (2, 5), (12, 15)]}
    assert scores[(5, 2)] == pytest.approx(scores[(13, 10)], abs=1e-4)
    assert scores[(5, 2)] == pytest.approx(scores[(103, 100)], abs=1e-4)
    assert scores[(2, 5)] == pytest.approx(scores[(12, 15)], abs=1e-4)
    assert abs(scores[(5, 2)] - scores[(2, 5)]) > 1e-3  # offset +3 and -3 differ


def test_alibi_slopes_are_the_papers():
    np.testing.assert_allclose(positions.alibi_slopes(8), [1 / 2 ** i for i in range(1, 9)])
    np.testing.assert_allclose(positions.alibi_slopes(16), [2 ** (-0.5 * i) for i in range(1, 17)], rtol=1e-6)
    # not a power of two (Press et al.'s reference code): the 4-head sequence, then every other one of the
    # 8-head sequence for the remaining heads
    np.testing.assert_allclose(positions.alibi_slopes(6), [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8])
    np.testing.assert_allclose(positions.alibi_slopes(12)[8:], [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5],
                               rtol=1e-6)


def test_alibi_bias_is_minus_slope_times_distance():
    q = jnp.array([[0, 1, 2, 3]])
    b = np.asarray(positions.alibi_bias(8, q, q))  # [1, 8, 4, 4]
    assert b.shape == (1, 8, 4, 4)
    np.testing.assert_allclose(b[0, 0, 3], [-1.5, -1.0, -0.5, 0.0])  # head 0: slope 1/2
    np.testing.assert_allclose(b[0, 7, 3], [-3 / 256, -2 / 256, -1 / 256, 0.0])  # head 7: slope 1/256
