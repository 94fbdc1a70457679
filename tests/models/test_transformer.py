"""The Vaswani encoder-decoder: shapes, decoder causality, encoder padding invariance, KV + cross cache
decoding, jit == eager, scan == loop, gradients, input errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import decoder
from jaxlm.models import transformer as tr
from jaxlm.nn import positions

B, S, T = 2, 7, 6


def _apply(params, src, tgt, cfg, src_valid=None, tgt_valid=None, key=None):
    return tr.apply(params, src, tgt, cfg, src_valid=src_valid, tgt_valid=tgt_valid, key=key)


def _decode(params, tgt, enc, cfg, src_valid=None, cache=None, cache_index=None):
    return tr.decode(params, tgt, enc, cfg, src_valid=src_valid, cache=cache, cache_index=cache_index)


APPLY = jax.jit(_apply, static_argnums=3)
ENCODE = jax.jit(lambda p, src, cfg, src_valid=None: tr.encode(p, src, cfg, src_valid=src_valid), static_argnums=2)
DECODE = jax.jit(_decode, static_argnums=3)


@pytest.fixture(scope="module")
def m():
    cfg = tr.PRESETS["transformer-tiny"].config
    params = tr.init(jax.random.key(0), cfg)
    src = jax.random.randint(jax.random.key(1), (B, S), 3, cfg.vocab_size)
    tgt = jax.random.randint(jax.random.key(2), (B, T), 3, cfg.vocab_size)
    valid = jnp.asarray([[True] * S, [True] * 4 + [False] * 3])
    return cfg, params, src, tgt, valid, APPLY(params, src, tgt, cfg, src_valid=valid)


def test_shapes_dtypes_and_paper_defaults(m):
    cfg, params, src, tgt, valid, logits = m
    assert logits.shape == (B, T, cfg.vocab_size) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    enc = ENCODE(params, src, cfg, src_valid=valid)
    assert enc.shape == (B, S, cfg.d_model)
    base = tr.PRESETS["transformer-base"].config
    assert (base.norm_position, base.pos_emb, base.activation, base.embed_scale, base.tie_embeddings) == (
        "post", "sinusoidal", "relu", True, True)
    assert (base.d_model, base.n_heads, base.d_ff, base.n_layers, base.dropout, base.vocab_size) == (
        512, 8, 2048, 6, 0.1, 37000)
    assert set(params) == {"embed", "encoder", "decoder"}  # one shared embedding, no separate head
    bf = APPLY(params, src, tgt, cfg.replace(dtype="bfloat16"), src_valid=valid)
    assert bf.dtype == jnp.float32 and np.all(np.isfinite(bf))


def test_embeddings_are_scaled_and_sinusoidal(m):
    cfg, params, src, *_ = m
    # the first sub-layer input: E[src] * sqrt(d) + PE (checked through a one-layer encoder's attention weights
    # would be indirect, so check the helper directly)
    x = decoder.embed(params["embed"], src, cfg, jnp.broadcast_to(jnp.arange(S), (B, S)))
    want = (np.asarray(params["embed"]["tokens"])[np.asarray(src)] * np.sqrt(cfg.d_model)
            + np.asarray(positions.sinusoidal(jnp.arange(S)[None], cfg.d_model)))
    np.testing.assert_allclose(x, want, atol=1e-5)


def test_decoder_is_causal(m):
    cfg, params, src, tgt, valid, logits = m
    base = np.asarray(tgt)
    for t in range(1, T):
        other = base.copy()
        other[:, t] = (base[:, t] + 5) % cfg.vocab_size
        out = APPLY(params, src, jnp.asarray(other), cfg, src_valid=valid)
        np.testing.assert_allclose(out[:, :t], logits[:, :t], atol=1e-5, err_msg=f"perturbing target {t}")
        assert np.abs(out[:, t] - logits[:, t]).max() > 1e-4


def test_encoder_padding_invariance(m):
    cfg, params, src, tgt, valid, logits = m
    other = src.at[1, 4:].set((src[1, 4:] + 17) % cfg.vocab_size)
    e1 = ENCODE(params, src, cfg, src_valid=valid)
    e2 = ENCODE(params, other, cfg, src_valid=valid)
    np.testing.assert_allclose(e1[1, :4], e2[1, :4], atol=1e-5)
    np.testing.assert_allclose(e1[0], e2[0], atol=1e-5)
    np.testing.assert_allclose(APPLY(params, other, tgt, cfg, src_valid=valid), logits, atol=1e-5)
    # a source that is only its real tokens gives the same decoder outputs
    short = APPLY(params, src[1:, :4], tgt[1:], cfg, src_valid=valid[1:, :4])
    np.testing.assert_allclose(short[0], logits[1], atol=1e-5)
    # without src_valid the padding leaks into the decoder (the test above can fail)
    assert not np.allclose(APPLY(params, other, tgt, cfg), APPLY(params, src, tgt, cfg), atol=1e-4)


def test_kv_and_cross_cache_decoding_equals_the_full_decode(m):
    cfg, params, src, tgt, valid, logits = m
    enc = ENCODE(params, src, cfg, src_valid=valid)
    cross = tr.cross_cache(params, enc, cfg)
    assert cross["k"].shape == (cfg.dec_layers, B, S, cfg.kv_heads, cfg.head_dim)
    cache = {"self": tr.init_cache(cfg, B, T + 2)["self"], "cross": cross}
    out, aux = DECODE(params, tgt[:, :2], None, cfg, src_valid=valid, cache=cache, cache_index=0)
    outs = [out]
    for t in range(2, T):
        out, aux = DECODE(params, tgt[:, t:t + 1], None, cfg, src_valid=valid, cache=aux["cache"], cache_index=t)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), logits, atol=1e-5)


def test_jit_equals_eager_and_scan_equals_loop(m):
    cfg, params, src, tgt, valid, logits = m
    np.testing.assert_allclose(tr.apply(params, src, tgt, cfg, src_valid=valid), logits, atol=1e-5)
    loop = APPLY(params, src, tgt, cfg.replace(scan_layers=False), src_valid=valid)
    np.testing.assert_allclose(loop, logits, atol=1e-5)


def test_gradients_are_finite_and_dropout_needs_a_key(m):
    cfg, params, src, tgt, valid, logits = m

    def loss(p):
        lg = tr.apply(p, src, tgt[:, :-1], cfg, src_valid=valid)
        return -jnp.take_along_axis(jax.nn.log_softmax(lg), tgt[:, 1:, None], -1).mean()

    grads = jax.jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)) and np.any(g != 0), path
    d1 = APPLY(params, src, tgt, cfg, src_valid=valid, key=jax.random.key(0))
    d2 = APPLY(params, src, tgt, cfg, src_valid=valid, key=jax.random.key(0))
    np.testing.assert_array_equal(d1, d2)
    assert not np.allclose(d1, logits, atol=1e-3)


def test_bad_inputs_name_the_fix(m):
    cfg, params, src, tgt, *_ = m
    L, V = cfg.max_len, cfg.vocab_size
    with pytest.raises(ValueError, match=rf"source length {L + 1} exceeds max_len={L}: truncate the source"):
        tr.encode(params, jnp.zeros((1, L + 1), jnp.int32), cfg)
    with pytest.raises(ValueError, match=rf"target length {L + 1} exceeds max_len={L}: truncate the target"):
        tr.decode(params, jnp.zeros((1, L + 1), jnp.int32), jnp.zeros((1, 3, cfg.d_model)), cfg)
    with pytest.raises(ValueError, match=rf"source token ids contain {V}, outside \[0, {V}\)"):
        tr.apply(params, jnp.full((1, 3), V), tgt[:1], cfg)
    with pytest.raises(ValueError, match=r"target token ids contain -1, outside"):
        tr.apply(params, src[:1], jnp.full((1, 3), -1), cfg)
    with pytest.raises(ValueError, match="pos_emb='rope': use 'sinusoidal' or 'learned'"):
        cfg.replace(pos_emb="rope")
