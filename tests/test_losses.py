"""Losses against numpy references; BERT masking proportions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import losses


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_cross_entropy_matches_numpy_with_weights():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, (3, 5))
    w = (rng.random((3, 5)) > 0.3).astype(np.float32)
    out = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(w))
    nll = -np.take_along_axis(_log_softmax(logits.astype(np.float64)), targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(out["loss"]), (nll * w).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(out["nll"]), (nll * w).sum(), rtol=1e-5)
    assert float(out["weight"]) == w.sum()
    assert float(out["correct"]) == ((logits.argmax(-1) == targets) * w).sum()


def test_label_smoothing_is_cross_entropy_with_the_smoothed_distribution():
    rng = np.random.default_rng(1)
    V, eps = 7, 0.1
    logits = rng.normal(size=(4, V)).astype(np.float32)
    targets = rng.integers(0, V, (4,))
    q = np.full((4, V), eps / V)
    q[np.arange(4), targets] += 1 - eps
    ref = -(q * _log_softmax(logits.astype(np.float64))).sum()
    out = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), label_smoothing=eps)
    np.testing.assert_allclose(float(out["loss"]), ref, rtol=1e-5)
    plain = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    np.testing.assert_allclose(float(out["nll"]), float(plain["loss"]), rtol=1e-6)


def test_z_loss_adds_squared_log_partition():
    logits = jnp.asarray([[2.0, -1.0, 0.5]])
    t = jnp.asarray([0])
    base = losses.cross_entropy(logits, t)["loss"]
    z = losses.cross_entropy(logits, t, z_loss=1e-2)["loss"]
    lse = np.log(np.exp([2.0, -1.0, 0.5]).sum())
    np.testing.assert_allclose(float(z - base), 1e-2 * lse**2, rtol=1e-5)


def test_mlm_mask_15_percent_split_80_10_10():
    B, T, V, mask_id = 64, 512, 1000, 4
    tokens = jax.random.randint(jax.random.key(0), (B, T), 5, V)
    maskable = jnp.ones((B, T), bool).at[:, :8].set(False)  # e.g. [CLS] / padding: never selected
    out, sel = losses.mlm_mask(jax.random.key(1), tokens, maskable, mask_id=mask_id, vocab_size=V, low=5)
    out, sel, tokens = map(np.asarray, (out, sel, tokens))
    assert not sel[:, :8].any()
    n = sel.sum()
    assert abs(n / (B * (T - 8)) - 0.15) < 0.01
    assert (out[~sel] == tokens[~sel]).all()  # unselected positions are untouched
    masked = (out == mask_id) & sel
    changed = (out != tokens) & (out != mask_id) & sel
    same = (out == tokens) & sel
    assert abs(masked.sum() / n - 0.8) < 0.02
    # random replacements can hit the original token (1/V), so "changed" is slightly under 10 %
    assert abs(changed.sum() / n - 0.1) < 0.015
    assert abs(same.sum() / n - 0.1) < 0.015
    assert out.min() >= 4 and out.max() < V


def test_span_loss_is_mean_of_start_and_end_cross_entropies():
    rng = np.random.default_rng(2)
    s, e = rng.normal(size=(2, 6)).astype(np.float32), rng.normal(size=(2, 6)).astype(np.float32)
    start, end = np.array([1, 2]), np.array([3, 2])
    out = losses.span_loss(jnp.asarray(s), jnp.asarray(e), jnp.asarray(start), jnp.asarray(end))
    ce = lambda x, y: -np.take_along_axis(_log_softmax(x.astype(np.float64)), y[:, None], -1).sum()  # noqa: E731
    np.testing.assert_allclose(float(out["loss"]), 0.5 * (ce(s, start) + ce(e, end)), rtol=1e-5)
    assert float(out["weight"]) == 2
