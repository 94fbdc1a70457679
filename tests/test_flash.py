"""The flash-style attention (own VJP, no saved probabilities) equals the reference einsum-softmax path,
values and gradients, under causal / padding / segment masks, ALiBi-style bias, MHA / GQA / MQA, and one or
several query blocks; and a GPT-2 built with ``attn_impl="flash"`` gives the reference model's logits and
gradients."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import models
from jaxlm.nn import attention, flash, masks


def _qkv(B=2, T=12, S=12, H=4, G=2, K=8, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (B, T, H, K)), jax.random.normal(kk, (B, S, G, K)),
            jax.random.normal(kv, (B, S, G, K)))


def _masks(B, T):
    seg = jnp.array([[1] * 5 + [2] * (T - 5), [1] * T])[:B]
    valid = jnp.arange(T)[None] < jnp.array([[T], [T - 4]])[:B]
    return {
        "none": None,
        "causal": masks.make_mask(T, causal=True),
        "causal+segments": masks.make_mask(T, causal=True, q_segment_ids=seg),
        "padding": masks.make_mask(T, kv_valid=valid),
        "causal+padding": masks.make_mask(T, causal=True, kv_valid=valid),
        # row 0 of batch 1 fully masked: both paths give the uniform distribution
        "fully-masked-row": jnp.ones((B, 1, T, T), bool).at[1, :, 0, :].set(False),
    }


def _ref(q, k, v, mask, bias):
    return attention.dot_product_attention(q, k, v, mask=mask, bias=bias)[0]


@pytest.mark.parametrize(("G", "block_q"), [(4, 512), (2, 5), (1, 5)], ids=["mha", "gqa-blocks", "mqa-blocks"])
def test_flash_equals_reference_values_and_grads(G, block_q):
    B, T, H = 2, 12, 4
    q, k, v = _qkv(B=B, T=T, S=T, H=H, G=G)
    w = jax.random.normal(jax.random.key(9), q.shape)
    bias = 0.3 * jax.random.normal(jax.random.key(3), (1, H, T, T))

    def fl(q, k, v, mask, bias):
        return flash.attention(q, k, v, mask=mask, bias=bias, block_q=block_q)

    @jax.jit
    def both(q, k, v, mask, bias):
        out = []
        for fn in (_ref, fl):
            def loss(q, k, v, bias, fn=fn):
                return jnp.sum(fn(q, k, v, mask, bias) * w)
            argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
            out.append((fn(q, k, v, mask, bias), jax.grad(loss, argnums)(q, k, v, bias)))
        return out

    cases = [(name, jnp.broadcast_to(m, (B, 1, T, T)), bias) for name, m in _masks(B, T).items() if m is not None]
    cases.append(("no mask, no bias", None, None))
    for name, mask, b in cases:
        (o_r, g_r), (o_f, g_f) = both(q, k, v, mask, b)
        np.testing.assert_allclose(o_f, o_r, atol=2e-5, err_msg=name)
        for a, r, what in zip(g_f, g_r, "qkvb"[: len(g_r)], strict=True):
            np.testing.assert_allclose(a, r, atol=5e-5, rtol=1e-4, err_msg=f"{name} d{what}")


def test_flash_cross_attention_lengths_and_errors():
    q, k, v = _qkv(T=7, S=10, H=4, G=4)
    valid = jnp.arange(10)[None] < jnp.array([[10], [6]])
    m = masks.make_mask(7, 10, kv_valid=valid)
    ref = jax.jit(_ref)(q, k, v, m, None)
    out = jax.jit(functools.partial(flash.attention, block_q=3))(q, k, v, mask=m)
    np.testing.assert_allclose(out, ref, atol=2e-5)
    with pytest.raises(ValueError, match="cannot be grouped"):
        flash.attention(q, k[:, :, :3], v[:, :, :3])
    with pytest.raises(ValueError, match="block_q"):
        flash.attention(q, k, v, block_q=0)


def test_flash_saves_no_probabilities():
    """The residuals saved for the backward pass hold no [.., T, S] array (the reference path's do)."""
    B, T, H = 2, 64, 4
    q, k, v = _qkv(B=B, T=T, S=T, H=H, G=H)
    m = masks.make_mask(T, causal=True)

    def saved_shapes(impl):
        def f(q, k, v):
            return attention.dot_product_attention(q, k, v, mask=m, impl=impl)[0]
        _, vjp = jax.vjp(f, q, k, v)
        return [x.shape for x in jax.tree.leaves(vjp) if hasattr(x, "shape")]

    big = lambda shapes: [s for s in shapes if len(s) >= 2 and s[-2:] == (T, T) and np.prod(s) > T * T]  # noqa: E731
    assert big(saved_shapes("reference")), "the reference path should save T x T probabilities"
    assert not big(saved_shapes("flash"))


@pytest.mark.slow
def test_gpt2_with_flash_matches_reference():
    """gpt2-tiny with attn_impl="flash" == reference: logits and every parameter gradient, packed segments."""
    module, cfg = models.get("gpt2-tiny")
    cfg = cfg.replace(dropout=0.0, attn_dropout=0.0)
    params = module.init(jax.random.key(0), cfg)
    toks = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
    seg = jnp.array([[1] * 9 + [2] * 7, [1] * 16])

    def loss(p, impl):
        lg = module.apply(p, toks, cfg.replace(attn_impl=impl), segment_ids=seg)
        return jnp.mean(jax.nn.log_softmax(lg)[..., 0]), lg

    vg = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (_, lg_r), g_r = vg(params, "reference")
    (_, lg_f), g_f = vg(params, "flash")
    np.testing.assert_allclose(lg_f, lg_r, atol=1e-4)
    for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_r), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-3)
