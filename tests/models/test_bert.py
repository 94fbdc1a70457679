"""BERT: heads and shapes, padding invariance, jit == eager, scan == loop, gradients, token-type and
position options, input errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import count
from jaxlm.config import ConfigError
from jaxlm.models import bert

B, T = 2, 8
HEADS = ("mlm", "classifier", "span")


def _forward(params, tokens, cfg, *, token_types=None, valid=None, positions=None, segment_ids=None, key=None):
    return bert.apply(params, tokens, cfg, token_types=token_types, valid=valid, positions=positions,
                      segment_ids=segment_ids, key=key)


FWD = jax.jit(_forward, static_argnums=2)


@pytest.fixture(scope="module")
def m():
    cfg = bert.PRESETS["bert-tiny"].config.replace(heads=HEADS, num_labels=3)
    params = bert.init(jax.random.key(0), cfg)
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, cfg.vocab_size)
    return cfg, params, tokens, FWD(params, tokens, cfg)


def test_heads_shapes_and_dtypes(m):
    cfg, params, tokens, out = m
    assert out["hidden"].shape == (B, T, 64) and out["pooled"].shape == (B, 64)
    assert out["mlm_logits"].shape == (B, T, cfg.vocab_size) and out["mlm_logits"].dtype == jnp.float32
    assert out["logits"].shape == (B, 3)
    assert out["start_logits"].shape == out["end_logits"].shape == (B, T)
    # the pooler is tanh(dense(hidden[:, 0]))
    want = np.tanh(np.asarray(out["hidden"][:, 0]) @ np.asarray(params["pooler"]["w"]) + np.asarray(params["pooler"]["b"]))
    np.testing.assert_allclose(out["pooled"], want, atol=1e-5)
    base = bert.PRESETS["bert-tiny"].config
    assert count(bert.spec(cfg)) - count(bert.spec(base)) == (64 * 64 + 64 + 64 * 2 + cfg.vocab_size  # mlm
                                                            + 64 * 3 + 3 + 64 * 2 + 2)  # classifier + span
    bf = FWD(params, tokens, cfg.replace(dtype="bfloat16"))
    assert bf["mlm_logits"].dtype == jnp.float32 and np.all(np.isfinite(bf["mlm_logits"]))
    assert float(jnp.abs(bf["hidden"].astype(jnp.float32) - out["hidden"]).max()) < 0.2


def test_padding_invariance(m):
    cfg, params, tokens, _ = m
    valid = jnp.asarray([[True] * T, [True] * 5 + [False] * 3])
    other = tokens.at[1, 5:].set((tokens[1, 5:] + 13) % cfg.vocab_size)
    a = FWD(params, tokens, cfg, valid=valid)
    b = FWD(params, other, cfg, valid=valid)
    for k in ("pooled", "logits"):
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)
    for k in ("hidden", "mlm_logits", "start_logits"):
        np.testing.assert_allclose(a[k][1, :5], b[k][1, :5], atol=1e-5, err_msg=k)
    np.testing.assert_allclose(a["hidden"][0], b["hidden"][0], atol=1e-5)
    # without the mask the padding leaks (so the test above can fail)
    c = FWD(params, other, cfg)
    assert not np.allclose(c["hidden"][1, :5], a["hidden"][1, :5], atol=1e-4)


def test_packed_segments_never_see_each_other(m):
    cfg, params, tokens, _ = m
    seg = jnp.asarray([[1] * 5 + [2] * 3] * B)
    pos = jnp.asarray([list(range(5)) + list(range(3))] * B)
    other = tokens.at[:, 5:].set((tokens[:, 5:] + 3) % cfg.vocab_size)
    a = FWD(params, tokens, cfg, segment_ids=seg, positions=pos)["hidden"]
    b = FWD(params, other, cfg, segment_ids=seg, positions=pos)["hidden"]
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-5)
    alone = FWD(params, tokens, cfg, valid=jnp.asarray([[True] * 5 + [False] * 3] * B))["hidden"]
    np.testing.assert_allclose(a[:, :5], alone[:, :5], atol=1e-5)


def test_jit_equals_eager_and_scan_equals_loop(m):
    cfg, params, tokens, out = m
    eager = bert.apply(params, tokens, cfg)
    loop = FWD(params, tokens, cfg.replace(scan_layers=False))
    for k in out:
        np.testing.assert_allclose(eager[k], out[k], atol=1e-5, err_msg=k)
        np.testing.assert_allclose(loop[k], out[k], atol=1e-5, err_msg=k)


def test_token_types_change_outputs_and_are_checked(m):
    cfg, params, tokens, out = m
    tt = jnp.asarray([[0] * 4 + [1] * 4] * B)
    a = FWD(params, tokens, cfg, token_types=tt)
    zero = FWD(params, tokens, cfg, token_types=tt * 0)
    np.testing.assert_allclose(zero["hidden"], out["hidden"], atol=1e-5)  # all type 0 == no token types
    assert not np.allclose(a["hidden"], out["hidden"], atol=1e-4)
    with pytest.raises(ValueError, match=r"token type ids contain 2, outside \[0, 2\): segment A is 0"):
        bert.apply(params, tokens, cfg, token_types=jnp.full((B, T), 2))


def test_gradients_are_finite_and_dropout_needs_a_key(m):
    cfg, params, tokens, out = m

    def loss(p):
        o = bert.apply(p, tokens, cfg)
        return (jax.nn.logsumexp(o["mlm_logits"], -1).mean() + o["logits"].sum() + o["start_logits"].sum()
                + o["end_logits"].sum())

    grads = jax.jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)) and np.any(g != 0), path
    d1 = FWD(params, tokens, cfg, key=jax.random.key(1))
    d2 = FWD(params, tokens, cfg, key=jax.random.key(1))
    np.testing.assert_array_equal(d1["hidden"], d2["hidden"])
    assert not np.allclose(d1["hidden"], out["hidden"], atol=1e-3)


def test_position_options():
    cfg = bert.PRESETS["bert-tiny"].config
    none = cfg.replace(pos_emb="none")
    assert count(bert.spec(cfg)) - count(bert.spec(none)) == cfg.max_len * cfg.d_model
    p = bert.init(jax.random.key(0), none)
    tokens = jnp.asarray([[5, 6, 7, 8]])
    h = FWD(p, tokens, none)["hidden"]
    h_rev = FWD(p, tokens[:, ::-1], none)["hidden"]
    np.testing.assert_allclose(h[:, ::-1], h_rev, atol=1e-5)  # no positions: permutation-equivariant
    with pytest.raises(ConfigError, match=r"bert.Config.pos_emb='rope': BERT adds a learned position table"):
        cfg.replace(pos_emb="rope")


def test_bad_config_and_inputs(m):
    cfg, params, tokens, _ = m
    with pytest.raises(ConfigError, match=r"heads entry='mln' is not one of \['mlm', 'classifier', 'span'\] "
                                          r"\(did you mean 'mlm'\?\)"):
        cfg.replace(heads=("mln",))
    with pytest.raises(ConfigError, match="the classifier head reads the pooled output; set pooler=True"):
        cfg.replace(pooler=False)
    with pytest.raises(ValueError, match=rf"sequence length {cfg.max_len + 1} exceeds max_len={cfg.max_len}"):
        bert.apply(params, jnp.zeros((1, cfg.max_len + 1), jnp.int32), cfg)
    with pytest.raises(ValueError, match=rf"token ids contain {cfg.vocab_size}, outside"):
        bert.apply(params, jnp.full((1, 3), cfg.vocab_size), cfg)
    with pytest.raises(ValueError, match=r"token ids contain -3, outside"):
        bert.apply(params, jnp.full((1, 3), -3), cfg)
