"""Gemma's (1 + w) RMSNorm, GeGLU (tanh), pre- and post-norm blocks, the sqrt(d) embedding scale in the model
dtype and final-logit soft-capping, each against transformers' own modules (torch) or the formula."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import ConfigError
from jaxlm.models import decoder, gemma
from jaxlm.nn import attention, blocks, ffn, norms
from jaxlm.params import init

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 5, 16)).astype(np.float32) * 2 + 0.5


def test_one_plus_w_rms_norm_equals_transformers_gemma_rmsnorm():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    w = RNG.standard_normal(16).astype(np.float32) * 0.3
    ref = GemmaRMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(w))
        want = ref(torch.tensor(X)).numpy()
    cfg = norms.NormConfig(kind="rmsnorm_1p", dim=16, eps=1e-6)
    got = norms.apply({"scale": jnp.asarray(w)}, jnp.asarray(X), cfg)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # the stored scale is the offset from one: zeros at init, and a zero offset is the plain RMS normalisation
    p = init(jax.random.key(0), norms.spec(cfg))
    assert np.all(np.asarray(p["scale"]) == 0)
    plain = norms.apply({"scale": jnp.ones(16)}, jnp.asarray(X), norms.NormConfig(kind="rmsnorm", dim=16, eps=1e-6))
    np.testing.assert_allclose(norms.apply(p, jnp.asarray(X), cfg), plain, atol=1e-6)
    # bfloat16 input: the product is taken in float32 and rounded once, as transformers does
    xb = jnp.asarray(X, jnp.bfloat16)
    with torch.no_grad():
        want_b = ref(torch.tensor(np.asarray(xb.astype(jnp.float32))).to(torch.bfloat16)).float().numpy()
    got_b = norms.apply({"scale": jnp.asarray(w)}, xb, cfg)
    assert got_b.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got_b.astype(jnp.float32)), want_b)


def test_geglu_tanh_equals_transformers_gemma_mlp():
    from transformers.models.gemma.modeling_gemma import GemmaMLP

    hc = transformers.GemmaConfig(hidden_size=16, intermediate_size=24, hidden_act="gelu_pytorch_tanh")
    torch.manual_seed(0)
    ref = GemmaMLP(hc).eval()
    c = ffn.FFNConfig(d_model=16, d_ff=24, activation="geglu_tanh", use_bias=False)
    p = {"wi_0": {"w": jnp.asarray(ref.gate_proj.weight.detach().numpy().T)},
         "wi_1": {"w": jnp.asarray(ref.up_proj.weight.detach().numpy().T)},
         "wo": {"w": jnp.asarray(ref.down_proj.weight.detach().numpy().T)}}
    with torch.no_grad():
        want = ref(torch.tensor(X)).numpy()
    np.testing.assert_allclose(ffn.apply(p, jnp.asarray(X), c), want, atol=1e-5)
    # the exact-erf GeGLU is a different function
    exact = ffn.apply(p, jnp.asarray(X), ffn.FFNConfig(d_model=16, d_ff=24, activation="geglu", use_bias=False))
    assert np.abs(np.asarray(exact) - want).max() > 1e-4


def _block_cfg(post_norms: bool) -> blocks.BlockConfig:
    return blocks.BlockConfig(
        attn=attention.AttentionConfig(d_model=16, n_heads=2, use_bias=False),
        ffn=ffn.FFNConfig(d_model=16, d_ff=32, activation="geglu_tanh", use_bias=False),
        norm=norms.NormConfig(kind="rmsnorm_1p", dim=16, eps=1e-6), post_norms=post_norms)


def test_pre_and_post_norm_block_equals_the_formula():
    c = _block_cfg(True)
    p = init(jax.random.key(1), blocks.spec(c))
    assert set(p) == {"norm1", "attn", "norm2", "mlp", "post_norm1", "post_norm2"}
    p = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(2), a.shape), p)  # non-trivial scales
    x = jnp.asarray(X)
    mask = jnp.tril(jnp.ones((5, 5), bool))[None, None]
    got, _ = blocks.apply(p, x, c, mask=mask)

    def n(name, h):
        return norms.apply(p[name], h, c.norm)

    a, _ = attention.apply(p["attn"], n("norm1", x), c.attn, mask=mask)
    h = x + n("post_norm1", a)  # Gemma 2: post_attention_layernorm before the residual sum
    want = h + n("post_norm2", ffn.apply(p["mlp"], n("norm2", h), c.ffn))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # without post_norms the block is the plain pre-norm block, and has no post_norm parameters
    c0 = _block_cfg(False)
    p0 = {k: v for k, v in p.items() if not k.startswith("post_")}
    assert set(blocks.spec(c0)) == set(p0)
    got0, _ = blocks.apply(p0, x, c0, mask=mask)
    a0, _ = attention.apply(p["attn"], n("norm1", x), c.attn, mask=mask)
    h0 = x + a0
    np.testing.assert_allclose(got0, h0 + ffn.apply(p["mlp"], n("norm2", h0), c.ffn), atol=1e-5)


def test_post_norms_need_a_pre_norm_block():
    with pytest.raises(ConfigError, match=r"post_norms=True .* needs norm_position='pre', got 'post'"):
        gemma.Config(post_norms=True, norm_position="post")
    with pytest.raises(ValueError, match=r"post_norms=True .* needs norm_position='pre'"):
        blocks.spec(blocks.BlockConfig(attn=_block_cfg(True).attn, ffn=_block_cfg(True).ffn,
                                       norm=_block_cfg(True).norm, norm_position="post", post_norms=True))


def test_embedding_scale_is_rounded_to_the_model_dtype_like_transformers():
    from transformers.models.gemma.modeling_gemma import GemmaTextScaledWordEmbedding

    d = 2048  # sqrt(2048) = 45.2548...; in bfloat16 45.25
    table = RNG.standard_normal((10, d)).astype(np.float32)
    ref = GemmaTextScaledWordEmbedding(10, d, padding_idx=0, embed_scale=d**0.5).to(torch.bfloat16)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(table).to(torch.bfloat16))
        want = ref(torch.tensor([[1, 2, 3]])).float().numpy()
    cfg = gemma.Config(vocab_size=10, d_model=d, dtype="bfloat16", param_dtype="bfloat16")
    got = decoder.embed({"tokens": jnp.asarray(table, jnp.bfloat16)}, jnp.asarray([[1, 2, 3]]), cfg,
                        jnp.arange(3)[None])
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), want)
    # float32: the plain product
    got32 = decoder.embed({"tokens": jnp.asarray(table)}, jnp.asarray([[1, 2, 3]]), cfg.replace(dtype="float32"),
                          jnp.arange(3)[None])
    np.testing.assert_allclose(got32, table[[1, 2, 3]][None] * d**0.5, rtol=1e-6)


def test_final_logit_softcap():
    cfg = gemma.PRESETS["gemma-tiny"].config
    params = gemma.init(jax.random.key(0), cfg)
    params["embed"]["tokens"] = params["embed"]["tokens"] * 200.0  # logits far beyond the cap
    x = jax.random.normal(jax.random.key(1), (1, 3, cfg.d_model))
    raw = decoder.logits(params, x, cfg)
    capped = decoder.logits(params, x, cfg.replace(final_logit_softcap=30.0))
    assert float(jnp.abs(raw).max()) > 60
    np.testing.assert_allclose(capped, 30.0 * np.tanh(np.asarray(raw) / 30.0), rtol=1e-6, atol=1e-5)
    assert float(jnp.abs(capped).max()) < 30.0
    with pytest.raises(ConfigError, match=r"final_logit_softcap=0.0 must be a positive finite number"):
        cfg.replace(final_logit_softcap=0.0)
