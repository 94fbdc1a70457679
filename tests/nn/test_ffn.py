"""Feed-forward networks: ReLU, GELU exact vs tanh, SwiGLU, GeGLU against numpy; FFN dropout."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import gpt2
from jaxlm.nn import ffn
from jaxlm.params import count, init

X = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
_erf = np.vectorize(math.erf)


def _gelu(x):
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _silu(x):
    return x / (1 + np.exp(-x))


PLAIN = {"relu": lambda x: np.maximum(x, 0), "gelu": _gelu, "gelu_tanh": _gelu_tanh, "silu": _silu}
GATED = {"swiglu": _silu, "geglu": _gelu, "geglu_tanh": _gelu_tanh}


def _cfg(act, **kw):
    return gpt2.Config(vocab_size=8, max_len=8, d_model=8, n_heads=2, n_layers=1, d_ff=16, activation=act, **kw)


@pytest.mark.parametrize("act", sorted(PLAIN) + sorted(GATED))
def test_ffn_matches_numpy(act):
    cfg = _cfg(act, init_std=0.5)
    p = init(jax.random.key(1), ffn.spec(cfg))
    n = {k: {kk: np.asarray(vv, np.float64) for kk, vv in v.items()} for k, v in p.items()}
    x = X.astype(np.float64)
    if act in GATED:
        assert count(p) == 3 * 8 * 16 + 2 * 16 + 8
        h = GATED[act](x @ n["wi_0"]["w"] + n["wi_0"]["b"]) * (x @ n["wi_1"]["w"] + n["wi_1"]["b"])
    else:
        assert count(p) == 2 * 8 * 16 + 16 + 8
        h = PLAIN[act](x @ n["wi"]["w"] + n["wi"]["b"])
    want = h @ n["wo"]["w"] + n["wo"]["b"]
    np.testing.assert_allclose(ffn.apply(p, jnp.asarray(X), cfg), want, atol=1e-4, rtol=1e-4)


def test_gelu_exact_and_tanh_differ():
    x = jnp.linspace(-4, 4, 101)
    exact, approx = ffn.ACTIVATIONS["gelu"](x), ffn.ACTIVATIONS["gelu_tanh"](x)
    np.testing.assert_allclose(exact, _gelu(np.asarray(x, np.float64)), atol=1e-6)
    np.testing.assert_allclose(approx, _gelu_tanh(np.asarray(x, np.float64)), atol=1e-6)
    assert 1e-5 < float(jnp.max(jnp.abs(exact - approx))) < 1e-2


def test_ffn_dropout_needs_a_key():
    cfg = _cfg("relu", ffn_dropout=0.5)
    p = init(jax.random.key(0), ffn.spec(cfg))
    x = jnp.asarray(X)
    a, b = ffn.apply(p, x, cfg), ffn.apply(p, x, cfg, key=None)
    np.testing.assert_array_equal(a, b)
    c = ffn.apply(p, x, cfg, key=jax.random.key(1))
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(c, ffn.apply(p, x, cfg, key=jax.random.key(1)))
    # inverted dropout keeps the expectation: E[dropout(x)] = x
    y = ffn.dropout(jnp.ones((200_000,)), 0.3, jax.random.key(0))
    assert float(y.mean()) == pytest.approx(1.0, abs=0.01)
    assert float((y == 0).mean()) == pytest.approx(0.3, abs=0.01)
