"""LayerNorm (with and without bias) and RMSNorm against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import llama
from jaxlm.nn import norms
from jaxlm.params import count, init

X = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32) * 3 + 1
SCALE = np.random.default_rng(1).standard_normal(8).astype(np.float32)
BIAS = np.random.default_rng(2).standard_normal(8).astype(np.float32)


def _cfg(norm):
    return llama.Config(vocab_size=8, max_len=8, d_model=8, n_heads=2, n_layers=1, d_ff=8, norm=norm, norm_eps=1e-5)


def test_layer_norm_matches_numpy():
    mean = X.mean(-1, keepdims=True)
    var = X.var(-1, keepdims=True)
    want = (X - mean) / np.sqrt(var + 1e-5) * SCALE + BIAS
    got = norms.apply({"scale": SCALE, "bias": BIAS}, jnp.asarray(X), _cfg("layernorm"))
    np.testing.assert_allclose(got, want, atol=1e-5)
    got_nb = norms.apply({"scale": SCALE}, jnp.asarray(X), _cfg("layernorm_nobias"))
    np.testing.assert_allclose(got_nb, want - BIAS, atol=1e-5)


def test_rms_norm_matches_numpy():
    want = X / np.sqrt((X**2).mean(-1, keepdims=True) + 1e-5) * SCALE
    got = norms.apply({"scale": SCALE}, jnp.asarray(X), _cfg("rmsnorm"))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # unlike LayerNorm, RMSNorm does not remove the mean
    ln = norms.apply({"scale": SCALE}, jnp.asarray(X), _cfg("layernorm_nobias"))
    assert not np.allclose(got, ln, atol=1e-2)


@pytest.mark.parametrize("norm,n", [("layernorm", 16), ("layernorm_nobias", 8), ("rmsnorm", 8)])
def test_norm_specs_and_low_precision_inputs(norm, n):
    cfg = _cfg(norm)
    spec = norms.spec(cfg)
    assert count(spec) == n
    p = init(jax.random.key(0), spec)
    y = norms.apply(p, jnp.asarray(X, jnp.bfloat16), cfg)
    assert y.dtype == jnp.bfloat16  # statistics in float32, result in the input dtype
    np.testing.assert_allclose(np.asarray(y, np.float32), norms.apply(p, jnp.asarray(X), cfg), atol=5e-2)
