"""LLaMA (grouped-query attention, RoPE, RMSNorm, SwiGLU): the shared decoder-LM checks plus layout and
MHA == GQA-with-duplicated-heads at the model level."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _lm_checks import *  # noqa: F403  (the shared decoder-LM tests)
from _lm_checks import FWD, LM, make_lm

from jaxlm.models import llama


@pytest.fixture(scope="module")
def lm() -> LM:
    cfg = llama.PRESETS["llama-tiny"].config
    assert cfg.kv_heads < cfg.n_heads  # the tests below exercise grouped-query attention
    return make_lm(llama, cfg)


def test_llama_parameter_layout():
    cfg = llama.PRESETS["llama2-7b"].config
    spec = llama.spec(cfg)
    assert set(spec["layers"]["mlp"]) == {"wi_0", "wi_1", "wo"}
    assert set(spec["layers"]["norm1"]) == {"scale"}  # RMSNorm: no bias
    assert "b" not in spec["layers"]["attn"]["q"]  # no biases
    assert spec["lm_head"]["w"].shape == (4096, 32000)  # untied head
    assert "positions" not in spec["embed"]  # RoPE: no position table
    tiny = llama.PRESETS["llama-tiny"].config
    assert llama.spec(tiny)["layers"]["attn"]["k"]["w"].shape == (2, 64, 2, 16)  # [L, D, G, K]


def test_gqa_model_equals_mha_model_with_duplicated_kv_heads(lm: LM):
    cfg = lm.cfg
    h = cfg.n_heads // cfg.kv_heads
    p = jax.tree.map(lambda a: a, lm.params)
    for n in ("k", "v"):
        p["layers"]["attn"][n] = {"w": jnp.repeat(lm.params["layers"]["attn"][n]["w"], h, axis=2)}
    mha = FWD(p, lm.tokens, cfg.replace(n_kv_heads=None))
    np.testing.assert_allclose(mha, lm.logits, atol=1e-5)
