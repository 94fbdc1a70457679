"""Residual blocks (pre- vs post-norm, cross-attention, dropout) and the layer stack (scan == loop,
remat policies give the same gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import gpt2
from jaxlm.nn import attention, blocks, ffn, masks, norms, stack
from jaxlm.params import init

B, T, D = 2, 5, 16
X = jnp.asarray(np.random.default_rng(0).standard_normal((B, T, D)), jnp.float32)
ENC = jnp.asarray(np.random.default_rng(1).standard_normal((B, 7, D)), jnp.float32)
MASK = masks.make_mask(T, causal=True)


def _cfg(**kw):
    base = dict(vocab_size=16, max_len=16, d_model=D, n_heads=2, n_layers=2, d_ff=32, dropout=0.0, attn_dropout=0.0)
    return gpt2.Config(**(base | kw))


@pytest.fixture(scope="module")
def cross_params():
    return init(jax.random.key(0), blocks.spec(_cfg(), cross=True))


@pytest.mark.parametrize("position", ["pre", "post"])
def test_block_follows_its_norm_position(cross_params, position):
    cfg = _cfg(norm_position=position)
    p = cross_params
    got, _ = blocks.apply(p, X, cfg, mask=MASK, enc=ENC)

    def attn(pp, h, kv=None, mask=None):
        return attention.apply(pp, h, cfg, kv=kv, mask=mask)[0]

    x = X
    if position == "pre":  # x + Sublayer(Norm(x))
        x = x + attn(p["attn"], norms.apply(p["norm1"], x, cfg), mask=MASK)
        x = x + attn(p["cross"], norms.apply(p["norm_cross"], x, cfg), kv=ENC)
        x = x + ffn.apply(p["mlp"], norms.apply(p["norm2"], x, cfg), cfg)
    else:  # Norm(x + Sublayer(x))
        x = norms.apply(p["norm1"], x + attn(p["attn"], x, mask=MASK), cfg)
        x = norms.apply(p["norm_cross"], x + attn(p["cross"], x, kv=ENC), cfg)
        x = norms.apply(p["norm2"], x + ffn.apply(p["mlp"], x, cfg), cfg)
    np.testing.assert_allclose(got, x, atol=1e-5)
    # post-norm outputs are normalised; pre-norm outputs are not
    std = float(jnp.std(got, axis=-1).mean())
    assert (abs(std - 1.0) < 1e-3) == (position == "post")


def test_block_dropout_and_weights(cross_params):
    cfg = _cfg(dropout=0.3, attn_dropout=0.3)
    a, aux = blocks.apply(cross_params, X, cfg, mask=MASK, enc=ENC, return_weights=True)
    b, _ = blocks.apply(cross_params, X, cfg, mask=MASK, enc=ENC, key=None)
    np.testing.assert_array_equal(a, b)
    assert aux["weights"].shape == (B, 2, T, T) and aux["cross_weights"].shape == (B, 2, T, 7)
    c, _ = blocks.apply(cross_params, X, cfg, mask=MASK, enc=ENC, key=jax.random.key(0))
    assert not np.allclose(a, c)
    d, _ = blocks.apply(cross_params, X, cfg, mask=MASK, enc=ENC, key=jax.random.key(0))
    np.testing.assert_array_equal(c, d)


@pytest.fixture(scope="module")
def stacked():
    cfg = _cfg()
    return cfg, init(jax.random.key(1), stack.spec(blocks.spec(cfg), cfg.n_layers))


def _run(params, cfg, scan, remat, keys=None):
    def body(p, h, k):
        h, aux = blocks.apply(p, h, cfg, mask=MASK, key=k, return_weights=True)
        return h, aux["weights"]

    return stack.apply(body, params, X, keys, scan=scan, remat=remat)


def test_stack_spec_adds_a_leading_layers_axis(stacked):
    cfg, params = stacked
    assert params["attn"]["q"]["w"].shape == (2, D, 2, 8)
    assert not np.allclose(params["attn"]["q"]["w"][0], params["attn"]["q"]["w"][1])
    np.testing.assert_array_equal(stack.layer(params, 1)["mlp"]["wo"]["w"], params["mlp"]["wo"]["w"][1])


def test_scan_equals_loop_equals_manual_layers(stacked):
    cfg, params = stacked
    keys = jax.random.split(jax.random.key(5), 2)
    for k in (None, keys):
        y_scan, w_scan = _run(params, cfg.replace(dropout=0.2), True, "none", k)
        y_loop, w_loop = _run(params, cfg.replace(dropout=0.2), False, "none", k)
        np.testing.assert_allclose(y_scan, y_loop, atol=1e-5)
        np.testing.assert_allclose(w_scan, w_loop, atol=1e-6)
        assert w_scan.shape == (2, B, 2, T, T)
    x = X
    for i in range(2):
        x, _ = blocks.apply(stack.layer(params, i), x, cfg, mask=MASK)
    np.testing.assert_allclose(_run(params, cfg, True, "none")[0], x, atol=1e-5)


def test_scan_equals_loop_gradients_and_every_remat_policy_agrees():
    # a small two-matmul layer keeps compiles cheap (the full blocks are checked scan == loop above and in
    # every model test); the policies only decide what is saved for the backward pass
    w = jax.random.normal(jax.random.key(0), (4, 2, D, D)) * 0.3

    def body(p, h, _):
        return jnp.tanh(jnp.tanh(h @ p[0]) @ p[1]) + h, None

    def loss(w, scan, remat):
        return jnp.sum(stack.apply(body, w, X, scan=scan, remat=remat)[0] ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=(1, 2))
    ref = grad(w, True, "none")
    variants = [(True, r) for r in stack.REMAT_POLICIES if r != "none"] + [(False, "none"), (False, "full")]
    for scan, remat in variants:
        np.testing.assert_allclose(grad(w, scan, remat), ref, atol=1e-4, rtol=1e-4, err_msg=f"{scan} {remat}")
    with pytest.raises(ValueError, match=r"unknown remat policy 'some'; choose one of \['none', 'full'"):
        stack.apply(body, w, X, remat="some")


def test_auto_remat_is_the_platforms_measured_best():
    """"auto" (the models' default) keeps only weight-matmul outputs on CPU, where that step measured fastest
    (benchmarks/RESULTS.md "Training"), and recomputes nothing on TPU/GPU; a named policy is kept as is."""
    assert stack.resolve_remat("auto", "cpu") == "dots_no_batch"
    assert stack.resolve_remat("auto", "tpu") == stack.resolve_remat("auto", "gpu") == "none"
    assert stack.resolve_remat("full", "cpu") == "full"
