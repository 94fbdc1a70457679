"""Checks shared by the decoder-only LMs (GPT-2, LLaMA). A test module defines an ``lm`` fixture returning
:class:`LM` and does ``from _lm_checks import *``; pytest then collects these functions in that module.

Everything runs through one jitted forward per (config, input layout), so a module compiles a handful of
small programs instead of retracing ``lax.scan`` on every eager call.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models.base import ModelConfig

B, T = 2, 8


def _forward(params, tokens, cfg, *, positions=None, segment_ids=None, kv_valid=None, cache=None,
             cache_index=None, key=None, return_aux=False, return_weights=False, return_hidden=False):
    from jaxlm import models

    return models.family_of(cfg).apply(
        params, tokens, cfg, positions=positions, segment_ids=segment_ids, kv_valid=kv_valid, cache=cache,
        cache_index=cache_index, key=key, return_aux=return_aux, return_weights=return_weights,
        return_hidden=return_hidden)


FWD = jax.jit(_forward, static_argnames=("cfg", "return_aux", "return_weights", "return_hidden"))


@dataclass
class LM:
    mod: ModuleType
    cfg: ModelConfig
    params: dict
    tokens: jax.Array  # [B, T]
    logits: jax.Array  # [B, T, V] from FWD(params, tokens, cfg)


def make_lm(mod: ModuleType, cfg: ModelConfig, seed: int = 0) -> LM:
    params = mod.init(jax.random.key(seed), cfg)
    tokens = jax.random.randint(jax.random.key(seed + 1), (B, T), 0, cfg.vocab_size)
    return LM(mod, cfg, params, tokens, FWD(params, tokens, cfg))


def test_shapes_and_dtypes(lm: LM):
    assert lm.logits.shape == (B, T, lm.cfg.vocab_size) and lm.logits.dtype == jnp.float32
    assert np.all(np.isfinite(lm.logits))
    logits, aux = FWD(lm.params, lm.tokens, lm.cfg, return_aux=True, return_weights=True, return_hidden=True)
    np.testing.assert_allclose(logits, lm.logits, atol=1e-5)
    assert aux["weights"].shape == (lm.cfg.n_layers, B, lm.cfg.n_heads, T, T)
    np.testing.assert_allclose(np.asarray(aux["weights"]).sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(np.asarray(aux["weights"]), k=1) == 0)  # causal: nothing above the diagonal
    assert aux["hidden"].shape == (B, T, lm.cfg.d_model)


def test_bfloat16_compute_runs(lm: LM):
    cfg = lm.cfg.replace(dtype="bfloat16")
    logits = FWD(lm.params, lm.tokens, cfg)
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
    # bf16 has ~3 significant digits: close to float32, not equal
    assert float(jnp.max(jnp.abs(logits - lm.logits))) < 0.1


def test_jit_equals_eager(lm: LM):
    np.testing.assert_allclose(lm.mod.apply(lm.params, lm.tokens, lm.cfg), lm.logits, atol=1e-5)


def test_scan_equals_loop(lm: LM):
    np.testing.assert_allclose(FWD(lm.params, lm.tokens, lm.cfg.replace(scan_layers=False)), lm.logits, atol=1e-5)


def test_causality_future_tokens_never_change_the_past(lm: LM):
    # changing token t leaves positions < t unchanged and changes position t
    base = np.asarray(lm.tokens[0])
    for t in range(1, T):
        row = base.copy()
        row[t] = (base[t] + 1 + t) % lm.cfg.vocab_size
        out = np.asarray(FWD(lm.params, jnp.asarray(np.stack([base, row])), lm.cfg))  # same [B, T]: no recompile
        np.testing.assert_allclose(out[1, :t], out[0, :t], atol=1e-5, err_msg=f"perturbing token {t}")
        assert np.abs(out[1, t] - out[0, t]).max() > 1e-4


def test_packed_segments_never_see_each_other(lm: LM):
    V = lm.cfg.vocab_size
    a, b = np.asarray(lm.tokens[0, :5]), np.asarray(lm.tokens[1, :3])
    a2, b2 = (a + 7) % V, (b + 11) % V
    seg = jnp.asarray([[1] * 5 + [2] * 3] * 2)
    pos = jnp.asarray([list(range(5)) + list(range(3))] * 2)  # positions restart in each segment
    packed = FWD(lm.params, jnp.asarray([np.r_[a, b], np.r_[a2, b]]), lm.cfg, segment_ids=seg, positions=pos)
    packed2 = FWD(lm.params, jnp.asarray([np.r_[a, b2], np.r_[a, b]]), lm.cfg, segment_ids=seg, positions=pos)
    # segment B's outputs do not depend on segment A, and A's not on B
    np.testing.assert_allclose(packed[0, 5:], packed[1, 5:], atol=1e-5)
    np.testing.assert_allclose(packed2[0, :5], packed[0, :5], atol=1e-5)
    assert not np.allclose(packed2[0, 5:], packed[0, 5:], atol=1e-4)
    # and each equals its sequence run alone (a prefix of an unpacked row; the causality test shows what
    # follows a prefix cannot change it, and this reuses the [B, T] program)
    alone = FWD(lm.params, jnp.asarray([np.r_[a, b], np.r_[b, a]]), lm.cfg)
    np.testing.assert_allclose(packed[0, :5], alone[0, :5], atol=1e-5)
    np.testing.assert_allclose(packed[0, 5:], alone[1, :3], atol=1e-5)
    # jax.nn.dot_product_attention ("xla") gets the same segment/causal mask and agrees
    xla = FWD(lm.params, jnp.asarray([np.r_[a, b], np.r_[a2, b]]), lm.cfg.replace(attn_impl="xla"),
              segment_ids=seg, positions=pos)
    np.testing.assert_allclose(xla, packed, atol=1e-5)


def test_gradients_are_finite(lm: LM):
    def loss(p):
        logits = lm.mod.apply(p, lm.tokens[:, :-1], lm.cfg)
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, lm.tokens[:, 1:, None], -1).mean()

    value, grads = jax.jit(jax.value_and_grad(loss))(lm.params)
    assert np.isfinite(value) and abs(float(value) - np.log(lm.cfg.vocab_size)) < 1.0  # near uniform at init
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), path


def test_kv_cache_decoding_equals_the_full_forward(lm: LM):
    S = T + 3  # more slots than tokens: unused slots must not leak in
    cache = lm.mod.init_cache(lm.cfg, B, S)
    assert cache["self"]["k"].shape == (lm.cfg.n_layers, B, S, lm.cfg.kv_heads, lm.cfg.head_dim)
    # a 3-token prefill, then one token at a time
    logits, aux = FWD(lm.params, lm.tokens[:, :3], lm.cfg, cache=cache, cache_index=0)
    outs = [logits]
    cache = aux["cache"]
    for t in range(3, T):
        logits, aux = FWD(lm.params, lm.tokens[:, t:t + 1], lm.cfg, cache=aux["cache"], cache_index=t)
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), lm.logits, atol=1e-5)


def test_left_padded_prompts_with_kv_valid(lm: LM):
    # row 1 is row 0's first 6 tokens left-padded by 2: with kv_valid and positions it gives the same logits
    toks = np.asarray(lm.tokens)
    padded = np.stack([toks[0], np.r_[[0, 0], toks[0, :6]]])
    valid = jnp.asarray([[True] * T, [False, False] + [True] * 6])
    pos = jnp.asarray([list(range(T)), [0, 0] + list(range(6))])
    out = FWD(lm.params, jnp.asarray(padded), lm.cfg, kv_valid=valid, positions=pos)
    np.testing.assert_allclose(out[1, 2:], out[0, :6], atol=1e-5)


def test_dropout_needs_a_key(lm: LM):
    cfg = lm.cfg if lm.cfg.dropout > 0 else lm.cfg.replace(dropout=0.1)
    b = FWD(lm.params, lm.tokens, cfg, key=jax.random.key(0))
    c = FWD(lm.params, lm.tokens, cfg, key=jax.random.key(0))
    d = FWD(lm.params, lm.tokens, cfg, key=jax.random.key(1))
    assert not np.allclose(lm.logits, b, atol=1e-3)  # lm.logits: key=None, deterministic
    np.testing.assert_array_equal(b, c)
    assert not np.allclose(b, d, atol=1e-3)


def test_bad_inputs_name_the_fix(lm: LM):
    V, L = lm.cfg.vocab_size, lm.cfg.max_len
    with pytest.raises(ValueError, match=rf"token ids contain {V}, outside \[0, {V}\): the tokenizer and"):
        lm.mod.apply(lm.params, jnp.full((1, 3), V), lm.cfg)
    with pytest.raises(ValueError, match=rf"token ids contain -1, outside \[0, {V}\)"):
        lm.mod.apply(lm.params, jnp.array([[1, -1]]), lm.cfg)
    with pytest.raises(ValueError, match="token ids must be integers"):
        lm.mod.apply(lm.params, jnp.zeros((1, 3), jnp.float32), lm.cfg)
    with pytest.raises(ValueError, match=rf"sequence length {L + 1} exceeds max_len={L}: truncate the input"):
        lm.mod.apply(lm.params, jnp.zeros((1, L + 1), jnp.int32), lm.cfg)
    cache = lm.mod.init_cache(lm.cfg, 1, 4)
    with pytest.raises(ValueError, match=r"cache_index=3 with 2 new tokens does not fit the cache's 4 slots"):
        lm.mod.apply(lm.params, jnp.zeros((1, 2), jnp.int32), lm.cfg, cache=cache, cache_index=3)
