"""Attention: the reference path against an independent numpy softmax attention; masks (causal, padding,
segments); implementations agree; GQA/MQA; dropout; self vs cross; KV-cache writes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import llama
from jaxlm.nn import attention, masks
from jaxlm.params import init

B, T, K = 2, 6, 8
RNG = np.random.default_rng(0)


def _np_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(K)) v with key/value heads repeated over their query-head groups."""
    H, G = q.shape[2], k.shape[2]
    k = np.repeat(k, H // G, axis=2).astype(np.float64)
    v = np.repeat(v, H // G, axis=2).astype(np.float64)
    s = np.einsum("bthk,bshk->bhts", q.astype(np.float64), k) / np.sqrt(q.shape[-1])
    if mask is not None:
        s = np.where(np.broadcast_to(mask, s.shape), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    return np.einsum("bhts,bshk->bthk", w, v), w


def _qkv(H, G, S=T):
    return (RNG.standard_normal((B, T, H, K)).astype(np.float32), RNG.standard_normal((B, S, G, K)).astype(np.float32),
            RNG.standard_normal((B, S, G, K)).astype(np.float32))


def _masks():
    seg = jnp.array([[1, 1, 1, 2, 2, 2], [1, 1, 2, 2, 2, 3]])
    valid = jnp.array([[True] * 6, [True, False, True, True, True, True]])  # no query row fully masked
    return {
        "none": None,
        "causal": masks.make_mask(T, causal=True),
        "padding": masks.make_mask(T, kv_valid=valid),
        "segments": masks.make_mask(T, q_segment_ids=seg),
        "causal+segments+padding": masks.make_mask(T, causal=True, q_segment_ids=seg, kv_valid=valid),
    }


@pytest.mark.parametrize("H,G", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_reference_matches_numpy_and_rows_sum_to_one(H, G):
    q, k, v = _qkv(H, G)
    for name, m in _masks().items():
        out, w = attention.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=m,
                                                 return_weights=True)
        want, want_w = _np_attention(q, k, v, None if m is None else np.asarray(m))
        np.testing.assert_allclose(out, want, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(w, want_w, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-6, err_msg=name)
        if m is not None:
            assert np.all(np.asarray(w)[~np.broadcast_to(np.asarray(m), w.shape)] == 0), name


def test_causal_mask_structure():
    m = np.asarray(masks.make_mask(4, causal=True))[0, 0]
    np.testing.assert_array_equal(m, np.tril(np.ones((4, 4), bool)))
    assert masks.make_mask(4) is None
    # with a cache: query slots 5..6 over 8 slots
    mc = np.asarray(masks.make_mask(2, 8, causal=True, q_positions=jnp.array([[5, 6]]),
                                    kv_positions=jnp.arange(8)[None]))[0, 0]
    np.testing.assert_array_equal(mc, np.arange(8)[None, :] <= np.array([[5], [6]]))


OTHER_IMPLS = [i for i in attention.IMPLS if i not in ("reference", "cudnn")]


@pytest.mark.parametrize("impl", OTHER_IMPLS + ["cudnn"])
@pytest.mark.parametrize("H,G", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_implementations_agree(impl, H, G):
    if impl == "cudnn" and jax.default_backend() != "gpu":
        pytest.skip("the cudnn implementation needs an NVIDIA GPU")
    # cuDNN's fused attention takes half precision only: compare it on bf16 inputs with a bf16 tolerance
    dt, tol = (jnp.bfloat16, 2e-2) if impl == "cudnn" else (jnp.float32, 2e-5)
    q, k, v = (jnp.asarray(a, dt) for a in _qkv(H, G))
    from jaxlm.nn import positions

    alibi = positions.alibi_bias(H, jnp.broadcast_to(jnp.arange(T), (B, T)), jnp.broadcast_to(jnp.arange(T), (B, T)))
    for name, m in _masks().items():
        for bias in (None, alibi):
            ref, _ = attention.dot_product_attention(q, k, v, mask=m, bias=bias, impl="reference")
            got, _ = attention.dot_product_attention(q, k, v, mask=m, bias=bias, impl=impl)
            np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32), atol=tol,
                                       err_msg=f"{name}, bias={bias is not None}")


@pytest.mark.parametrize("impl", [i for i in attention.IMPLS if i != "cudnn"])
def test_fully_masked_rows_give_finite_outputs(impl):
    # left padding: a padded query at slot 0 sees no valid key; its output is ignored but must not be NaN
    # (NaN would poison gradients through the masked loss)
    q, k, v = (jnp.asarray(a) for a in _qkv(4, 2))
    valid = jnp.array([[False, False, True, True, True, True]] * B)
    m = masks.make_mask(T, causal=True, kv_valid=valid)
    out, _ = attention.dot_product_attention(q, k, v, mask=m, impl=impl)
    assert np.all(np.isfinite(out))
    ref, _ = attention.dot_product_attention(q, k, v, mask=m, impl="reference")
    np.testing.assert_allclose(out[:, 2:], ref[:, 2:], atol=2e-5)
    g = jax.grad(lambda q: attention.dot_product_attention(q, k, v, mask=m, impl=impl)[0][:, 2:].sum())(q)
    assert np.all(np.isfinite(g))


def test_unknown_implementation_is_rejected():
    q, k, v = (jnp.asarray(a) for a in _qkv(2, 2))
    with pytest.raises(ValueError, match=r"unknown attention implementation 'fast'; choose one of"):
        attention.dot_product_attention(q, k, v, impl="fast")
    with pytest.raises(ValueError, match="4 query heads cannot be grouped over 3"):
        attention.dot_product_attention(jnp.zeros((1, 2, 4, 8)), jnp.zeros((1, 2, 3, 8)), jnp.zeros((1, 2, 3, 8)))


def _cfg(**kw):
    base = dict(vocab_size=16, max_len=16, d_model=32, n_heads=4, n_kv_heads=2, n_layers=1, d_ff=32,
                pos_emb="none", use_bias=True)
    return llama.Config(**(base | kw))


def test_mha_equals_gqa_with_duplicated_kv_heads():
    gqa = _cfg(n_kv_heads=2)
    p = init(jax.random.key(0), attention.spec(gqa))
    mha = gqa.replace(n_kv_heads=None)
    # query head i reads key/value head i // (H / G): duplicate each kv head over its group
    p_mha = dict(p)
    for n in ("k", "v"):
        p_mha[n] = {"w": jnp.repeat(p[n]["w"], 2, axis=1), "b": jnp.repeat(p[n]["b"], 2, axis=0)}
    x = jnp.asarray(RNG.standard_normal((B, T, 32)), jnp.float32)
    m = masks.make_mask(T, causal=True)
    for pos in ("rope", "alibi"):  # position-dependent paths, where head bookkeeping matters
        y_g, _ = attention.apply(p, x, gqa.replace(pos_emb=pos), mask=m)
        y_m, _ = attention.apply(p_mha, x, mha.replace(pos_emb=pos), mask=m)
        np.testing.assert_allclose(y_g, y_m, atol=1e-5, err_msg=pos)


def test_self_attention_module_matches_numpy_projections():
    cfg = _cfg()
    p = init(jax.random.key(1), attention.spec(cfg))
    x = RNG.standard_normal((B, T, 32)).astype(np.float32)
    enc = RNG.standard_normal((B, 9, 32)).astype(np.float32)
    n = jax.tree.map(np.asarray, p)

    def proj(name, a):
        return np.einsum("btd,dhk->bthk", a, n[name]["w"]) + n[name]["b"]

    # self-attention, causal
    m = np.tril(np.ones((T, T), bool))[None, None]
    o, _ = _np_attention(proj("q", x), proj("k", x), proj("v", x), m)
    want = np.einsum("bthk,hkd->btd", o, n["o"]["w"]) + n["o"]["b"]
    got, aux = attention.apply(p, jnp.asarray(x), cfg, mask=jnp.asarray(m))
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert aux == {}
    # cross-attention over a longer source with padding, weights returned
    valid = np.ones((B, 9), bool)
    valid[1, 6:] = False
    o, w = _np_attention(proj("q", x), proj("k", enc), proj("v", enc), valid[:, None, None, :])
    want = np.einsum("bthk,hkd->btd", o, n["o"]["w"]) + n["o"]["b"]
    got, aux = attention.apply(p, jnp.asarray(x), cfg, kv=jnp.asarray(enc),
                               mask=masks.make_mask(T, 9, kv_valid=jnp.asarray(valid)), return_weights=True)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert aux["weights"].shape == (B, 4, T, 9)
    np.testing.assert_allclose(aux["weights"], w, atol=1e-5)


def test_kv_cache_step_by_step_equals_full_self_attention():
    cfg = _cfg(pos_emb="rope")
    p = init(jax.random.key(2), attention.spec(cfg))
    x = jnp.asarray(RNG.standard_normal((B, T, 32)), jnp.float32)
    full, _ = attention.apply(p, x, cfg, mask=masks.make_mask(T, causal=True))
    S = T + 2
    cache = {"k": jnp.zeros((B, S, 2, 8)), "v": jnp.zeros((B, S, 2, 8))}
    outs = []
    for t in range(T):
        slots = jnp.full((B, 1), t)
        m = masks.make_mask(1, S, causal=True, q_positions=slots, kv_positions=jnp.arange(S)[None])
        y, aux = attention.apply(p, x[:, t:t + 1], cfg, mask=m, positions=slots, cache=cache, cache_index=t)
        cache = aux["cache"]
        outs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)


def test_dropout_only_with_a_key():
    cfg = _cfg(attn_dropout=0.5)
    p = init(jax.random.key(3), attention.spec(cfg))
    x = jnp.asarray(RNG.standard_normal((B, T, 32)), jnp.float32)
    a, _ = attention.apply(p, x, cfg)
    b, _ = attention.apply(p, x, cfg, key=None)
    np.testing.assert_array_equal(a, b)
    c, _ = attention.apply(p, x, cfg, key=jax.random.key(0))
    d, _ = attention.apply(p, x, cfg, key=jax.random.key(0))
    e, _ = attention.apply(p, x, cfg, key=jax.random.key(1))
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(c, d)
    assert not np.allclose(c, e)
    # a non-reference implementation falls back to the reference path when dropout is asked for
    f, _ = attention.apply(p, x, cfg.replace(attn_impl="xla"), key=jax.random.key(0))
    np.testing.assert_allclose(f, c, atol=1e-6)


def test_auto_attention_is_chosen_by_the_platform_traced_for():
    """``attn_impl="auto"``: reference on CPU, flash on TPU (no [T, S] tensor kept), cuDNN on GPU in half
    precision with head_dim <= 128 (its fused kernel's limits), flash otherwise; explicit choices stay."""
    r = attention.resolve_impl
    assert r("auto", jnp.float32, 64, on="cpu") == "reference"
    assert r("auto", jnp.bfloat16, 128, on="tpu") == "flash"
    assert r("auto", jnp.bfloat16, 128, on="gpu") == "cudnn"
    assert r("auto", jnp.float16, 64, on="gpu") == "cudnn"
    assert r("auto", jnp.float32, 64, on="gpu") == "flash"
    assert r("auto", jnp.bfloat16, 256, on="gpu") == "flash"
    assert r("xla", jnp.float32, 64, on="tpu") == "xla"
    assert attention.platform() == jax.default_backend() == "cpu"  # no mesh in use: the default backend
    from jaxlm import sharding
    with sharding.use_mesh(sharding.make_mesh(devices=jax.devices()[:1])):
        assert attention.platform() == "cpu"


def test_auto_attention_keeps_no_scores_in_the_tpu_plan():
    """The planner resolves "auto" for the platform it plans: the [T, S] scores counted on CPU are gone on
    TPU (flash), as with attn_impl="flash"."""
    from jaxlm import plan as PL
    from jaxlm.train import config as C

    run = C.resolve(C.apply_overrides(C.RunConfig(model="llama-tiny"), {"data.seq_len": "128", "model.remat": "none"}))
    auto = PL.activation_bytes(run, "tpu")
    flash = PL.activation_bytes(run.replace(model=run.model.replace(attn_impl="flash")), "tpu")
    ref = PL.activation_bytes(run.replace(model=run.model.replace(attn_impl="reference")), "tpu")
    assert auto["kept"] == flash["kept"] < ref["kept"]
    # on CPU "auto" is the reference attention: its [T, S] tensors are counted
    cpu = PL.activation_bytes(run, "cpu")
    assert cpu["kept"] == PL.activation_bytes(run.replace(model=run.model.replace(attn_impl="reference")), "cpu")["kept"]
