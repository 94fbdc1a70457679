"""The building blocks Qwen3 and OLMo 2 added to jaxlm.nn, on their own narrow configs: QK-norm per head
("head") and over the whole projection ("full") against a NumPy RMSNorm, before RoPE; the block with norms
only on the sub-layers' outputs (``pre_norms=False``); and both off by default (no new parameters)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxlm.nn import attention, blocks, ffn, norms
from jaxlm.nn import positions as pos_enc
from jaxlm.params import init

D, H, G, K = 32, 4, 2, 16


def _rms(x: np.ndarray, w: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x**2, axis=axes, keepdims=True) + eps) * w


def _params(cfg, seed=0):
    p = init(jax.random.key(seed), attention.spec(cfg))
    # scales away from one, so that a scale applied to the wrong axis cannot pass
    rng = np.random.default_rng(seed)
    for n in ("q_norm", "k_norm"):
        if n in p:
            p[n]["scale"] = p[n]["scale"] + rng.normal(0, 0.5, p[n]["scale"].shape).astype(np.float32)
    return p


def test_off_by_default_adds_no_parameters():
    c = attention.AttentionConfig(d_model=D, n_heads=H, n_kv_heads=G, head_dim=K)
    assert c.qk_norm is None and set(attention.spec(c)) == {"q", "k", "v", "o"}
    b = blocks.BlockConfig(attn=c, ffn=ffn.FFNConfig(d_model=D, d_ff=48), norm=norms.NormConfig(dim=D))
    assert b.pre_norms and set(blocks.spec(b)) == {"norm1", "attn", "norm2", "mlp"}


@pytest.mark.parametrize("kind", ["head", "full"])
def test_qk_norm_is_an_rmsnorm_of_the_projection_before_rope(kind):
    eps = 1e-6
    c = attention.AttentionConfig(d_model=D, n_heads=H, n_kv_heads=G, head_dim=K, use_bias=False,
                                  qk_norm=kind, qk_norm_eps=eps, pos_emb="rope", rope_theta=100.0)
    p = _params(c)
    shapes = {"head": ((K,), (K,)), "full": ((H, K), (G, K))}[kind]
    assert (p["q_norm"]["scale"].shape, p["k_norm"]["scale"].shape) == shapes
    x = jax.random.normal(jax.random.key(3), (2, 5, D))
    pos = np.broadcast_to(np.arange(5)[None], (2, 5))
    q_lin = np.einsum("btd,dhk->bthk", np.asarray(x), np.asarray(p["q"]["w"]))
    k_lin = np.einsum("btd,dgk->btgk", np.asarray(x), np.asarray(p["k"]["w"]))
    axes = (-1,) if kind == "head" else (-2, -1)
    want_q = _rms(q_lin, np.asarray(p["q_norm"]["scale"]), axes, eps)
    want_k = _rms(k_lin, np.asarray(p["k_norm"]["scale"]), axes, eps)
    # RoPE comes after the norm: undo nothing, apply the same rotation to the NumPy result
    inv = c.inv_freq()
    want_q = np.asarray(pos_enc.apply_rope(want_q.astype(np.float32), pos, c.rope_theta, inv))
    want_k = np.asarray(pos_enc.apply_rope(want_k.astype(np.float32), pos, c.rope_theta, inv))
    np.testing.assert_allclose(np.asarray(attention.project_q(p, x, c, pos)), want_q, atol=1e-5)
    np.testing.assert_allclose(np.asarray(attention.project_kv(p, x, c, pos)[0]), want_k, atol=1e-5)
    # the two kinds differ (a per-head norm is not a whole-projection norm)
    other = c.__class__(**{**c.__dict__, "qk_norm": "full" if kind == "head" else "head"})
    q_other = attention.project_q({**p, **_params(other)}, x, other, pos)
    assert np.abs(np.asarray(q_other) - want_q).max() > 1e-2


def test_unknown_qk_norm_is_refused_by_name():
    c = attention.AttentionConfig(d_model=D, n_heads=H, qk_norm="layer")
    with pytest.raises(ValueError, match=r"qk_norm='layer' is not one of \(None, 'head', 'full'\)"):
        attention.spec(c)


def test_block_with_norms_only_after_the_sub_layers():
    a = attention.AttentionConfig(d_model=D, n_heads=H, n_kv_heads=G, use_bias=False, pos_emb="rope")
    f = ffn.FFNConfig(d_model=D, d_ff=48, activation="swiglu", use_bias=False)
    n = norms.NormConfig(kind="rmsnorm", dim=D, eps=1e-6)
    b = blocks.BlockConfig(attn=a, ffn=f, norm=n, post_norms=True, pre_norms=False)
    spec = blocks.spec(b)
    assert set(spec) == {"attn", "post_norm1", "mlp", "post_norm2"}
    p = init(jax.random.key(0), spec)
    rng = np.random.default_rng(1)
    for k in ("post_norm1", "post_norm2"):
        p[k]["scale"] = p[k]["scale"] + rng.normal(0, 0.5, (D,)).astype(np.float32)
    x = jax.random.normal(jax.random.key(2), (2, 6, D))
    # x + RMSNorm(Attention(x)), then h + RMSNorm(MLP(h)): the sub-layers read the un-normalised stream
    h = x + norms.apply(p["post_norm1"], attention.apply(p["attn"], x, a)[0], n)
    want = h + norms.apply(p["post_norm2"], ffn.apply(p["mlp"], h, f), n)
    np.testing.assert_allclose(np.asarray(blocks.apply(p, x, b)[0]), np.asarray(want), atol=1e-6)
    with pytest.raises(ValueError, match=r"pre_norms=False .* needs post_norms=True"):
        blocks.spec(blocks.BlockConfig(attn=a, ffn=f, norm=n, pre_norms=False))
