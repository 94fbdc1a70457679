"""qwen3 tiny preset: the shared decoder-LM checks (causality, padding, packing, jit == eager, scan == loop,
KV-cache decoding == the full forward, errors) with QK-norm and a head_dim independent of d_model / n_heads;
the parameter layout; and training (full and LoRA) through the train step."""

from __future__ import annotations

import numpy as np
import pytest
from _lm_checks import *  # noqa: F403  (the shared decoder-LM tests)
from _lm_checks import FWD, LM, make_lm
from _tiny_training import lora_trains, loss_falls

from jaxlm import count
from jaxlm.config import ConfigError
from jaxlm.models import qwen3


@pytest.fixture(scope="module")
def lm() -> LM:
    cfg = qwen3.PRESETS["qwen3-tiny"].config
    assert cfg.n_heads * cfg.head_dim != cfg.d_model  # head_dim really is independent
    return make_lm(qwen3, cfg)


def test_qwen3_parameter_layout():
    cfg = qwen3.PRESETS["qwen3-tiny"].config
    a = qwen3.spec(cfg)["layers"]["attn"]
    assert a["q"]["w"].shape == (2, 64, 4, 32) and a["k"]["w"].shape == (2, 64, 2, 32)
    assert a["q_norm"]["scale"].shape == (2, 32) and a["k_norm"]["scale"].shape == (2, 32)  # per head: [K]
    assert all("b" not in a[x] for x in "qkvo")
    small, big = qwen3.PRESETS["qwen3-0.6b"].config, qwen3.PRESETS["qwen3-8b"].config
    assert small.tie_embeddings and "lm_head" not in qwen3.spec(small)
    assert not big.tie_embeddings and "lm_head" in qwen3.spec(big)
    assert (small.head_dim, small.n_heads * small.head_dim, small.d_model) == (128, 2048, 1024)
    # the QK-norm is 2 * head_dim parameters per layer on top of LLaMA's layers
    assert count(qwen3.spec(cfg)) - count(qwen3.spec(cfg.replace(qk_norm=None))) == 2 * 2 * 32


def test_qk_norm_changes_the_model_and_is_validated(lm: LM):
    off = {**lm.params, "layers": {**lm.params["layers"], "attn": {
        k: v for k, v in lm.params["layers"]["attn"].items() if k not in ("q_norm", "k_norm")}}}
    plain = np.asarray(FWD(off, lm.tokens, lm.cfg.replace(qk_norm=None)))
    assert np.abs(plain - np.asarray(lm.logits)).max() > 1e-3
    with pytest.raises(ConfigError, match=r"qwen3.Config.qk_norm='per_head' is not one of \['head', 'full'\]"):
        lm.cfg.replace(qk_norm="per_head")


def test_a_tiny_run_trains_and_lora_finds_every_projection(lm: LM):
    losses = loss_falls(lm.cfg, steps=6)
    assert losses[-1] < losses[0] - 0.5, losses
    # LoRA targets by the shared names (the QK-norm scales are not projections); LoRA training itself runs
    # in test_olmo2.py (the same step for every decoder)
    paths, _, ref, zero_b = lora_trains(qwen3, lm.cfg, steps=0)
    assert paths == [f"layers/attn/{x}" for x in ("k", "o", "q", "v")] + [
        "layers/mlp/wi_0", "layers/mlp/wi_1", "layers/mlp/wo"]
    np.testing.assert_allclose(zero_b, ref, atol=1e-6)  # B = 0: the base model (up to XLA's fusion order)
