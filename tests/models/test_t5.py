"""T5: relative-position buckets against an independent implementation, one bias per stack shared by its
layers, decoder causality, encoder padding invariance, KV + cross cache decoding, jit == eager, scan == loop,
T5's parameter layout (no biases, RMSNorm, no positions), and config errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import params as P
from jaxlm.config import ConfigError
from jaxlm.models import t5
from jaxlm.nn import relative

B, S, T = 2, 21, 9


def _bucket_reference(rel: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """Mesh TensorFlow's _relative_position_bucket for one integer, written out with Python scalars."""
    ret, n = 0, -rel
    if bidirectional:
        num_buckets //= 2
        if n < 0:
            ret += num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return ret + min(val, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("nb,md", [(32, 128), (8, 20)])
def test_buckets_equal_the_reference(bidirectional, nb, md):
    rel = np.arange(-300, 301)
    ours = np.asarray(relative.buckets(jnp.asarray(rel), bidirectional=bidirectional, num_buckets=nb, max_distance=md))
    ref = [_bucket_reference(int(r), bidirectional, nb, md) for r in rel]
    np.testing.assert_array_equal(ours, ref)
    assert ours.min() >= 0 and ours.max() == nb - 1


def test_bad_relative_attention_settings_name_the_field():
    with pytest.raises(ConfigError, match=r"rel_buckets=0 must be a positive integer"):
        t5.Config(rel_buckets=0)
    with pytest.raises(ConfigError, match=r"rel_max_distance=16 must be an integer >= rel_buckets=32"):
        t5.Config(rel_max_distance=16)
    with pytest.raises(ConfigError, match="t5 family's fields"):  # T5 has no absolute positions
        t5.Config(pos_emb="learned")


@pytest.fixture(scope="module")
def m():
    cfg = t5.PRESETS["t5-tiny"].config
    params = t5.init(jax.random.key(0), cfg)
    src = jax.random.randint(jax.random.key(1), (B, S), 3, cfg.vocab_size)
    tgt = jax.random.randint(jax.random.key(2), (B, T), 3, cfg.vocab_size)
    valid = jnp.asarray([[True] * S, [True] * 12 + [False] * (S - 12)])
    apply = jax.jit(lambda p, s, t, c, v: t5.apply(p, s, t, c, src_valid=v), static_argnums=3)
    return cfg, params, src, tgt, valid, apply, apply(params, src, tgt, cfg, valid)


def test_layout_is_t5s(m):
    cfg, params, *_ = m
    flat = P.flatten(params)
    assert not [k for k in flat if k.endswith("/b") or k.endswith("/bias")]  # no biases anywhere
    assert "embed/positions" not in flat and "lm_head/w" not in flat  # relative positions; tied head
    # one relative-bias table per stack, [buckets, heads], not one per layer
    assert sorted(k for k in flat if "rel_bias" in k) == ["decoder/rel_bias/table", "encoder/rel_bias/table"]
    assert flat["encoder/rel_bias/table"].shape == (cfg.rel_buckets, cfg.n_heads)
    assert flat["encoder/layers/norm1/scale"].shape == (cfg.n_layers, cfg.d_model)  # RMSNorm: scale only
    assert cfg.attn_cfg.scale == 1.0  # no 1/sqrt(d_k): it is in the query's init
    q = np.asarray(flat["encoder/layers/attn/q/w"])
    np.testing.assert_allclose(q.std(), (cfg.d_model * cfg.head_dim) ** -0.5, rtol=0.1)
    untied = t5.spec(t5.PRESETS["t5-v1_1-small"].config)
    assert "lm_head" in untied and "wi_0" in untied["encoder"]["layers"]["mlp"]


def test_relative_bias_is_computed_once_and_shared_by_the_layers(m):
    cfg, params, src, tgt, valid, apply, logits = m
    seen = []

    def spy(p, x, c, **kw):
        seen.append(kw.get("bias"))
        from jaxlm.nn import blocks
        return blocks.apply(p, x, c, **kw)

    # remat none: a rematerialised block sees its arguments as fresh tracers, so identity would not show
    t5.encode(params, src, cfg.replace(scan_layers=False, remat="none"), block_fn=spy)
    assert len(seen) == cfg.n_layers and all(b is seen[0] for b in seen)
    pos = jnp.arange(S)[None]
    expected = t5.position_bias(params["encoder"]["rel_bias"], pos, pos, cfg, bidirectional=True)
    np.testing.assert_array_equal(seen[0], expected)
    # bidirectional: a key 3 after the query and one 3 before it get different buckets
    b = relative.buckets(jnp.asarray([3, -3]), bidirectional=True, num_buckets=8, max_distance=32)
    assert int(b[0]) != int(b[1])


def test_decoder_is_causal_and_encoder_ignores_padding(m):
    cfg, params, src, tgt, valid, apply, logits = m
    changed = tgt.at[:, 5:].set(7)
    out = apply(params, src, changed, cfg, valid)
    np.testing.assert_allclose(out[:, :5], logits[:, :5], atol=1e-5)
    assert not np.allclose(out[:, 5:], logits[:, 5:], atol=1e-4)
    padded = src.at[1, 12:].set(5)  # different padding tokens, same real ones
    np.testing.assert_allclose(apply(params, padded, tgt, cfg, valid)[1], logits[1], atol=1e-5)


def test_kv_and_cross_cache_decoding_equals_the_full_decode(m):
    cfg, params, src, tgt, valid, apply, logits = m
    enc = t5.encode(params, src, cfg, src_valid=valid)
    cache = {"self": t5.init_cache(cfg, B, T + 2)["self"], "cross": t5.cross_cache(params, enc, cfg)}
    dec = jax.jit(lambda p, x, c, i: t5.decode(p, x, None, cfg, src_valid=valid, cache=c, cache_index=i))
    out, aux = dec(params, tgt[:, :3], cache, 0)
    outs = [out]
    for t in range(3, T):
        out, aux = dec(params, tgt[:, t:t + 1], aux["cache"], t)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), logits, atol=1e-4)


def test_jit_equals_eager_scan_equals_loop_and_dropout_needs_a_key(m):
    cfg, params, src, tgt, valid, apply, logits = m
    np.testing.assert_allclose(t5.apply(params, src, tgt, cfg, src_valid=valid), logits, atol=1e-4)
    np.testing.assert_allclose(apply(params, src, tgt, cfg.replace(scan_layers=False), valid), logits, atol=1e-4)
    drop = jax.jit(lambda p, k: t5.apply(p, src, tgt, cfg, src_valid=valid, key=k))(params, jax.random.key(3))
    assert not np.allclose(drop, logits, atol=1e-3)


def test_head_rescale(m):
    cfg, params, src, tgt, valid, apply, logits = m
    plain = apply(params, src, tgt, cfg.replace(head_rescale=False), valid)
    np.testing.assert_allclose(plain * cfg.d_model**-0.5, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["xla", "flash"])
def test_fused_attention_kernels_equal_the_reference(m, impl):
    # the fused kernels scale by 1/sqrt(K) themselves: T5's scale 1.0 is folded into q; the bias passes through
    cfg, params, src, tgt, valid, apply, logits = m
    np.testing.assert_allclose(apply(params, src, tgt, cfg.replace(attn_impl=impl), valid), logits, atol=1e-4)
