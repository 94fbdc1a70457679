"""olmo2 family tiny presets: the shared decoder-LM checks (causality, padding, packing, jit == eager,
scan == loop, KV-cache decoding == the full forward, errors) on a 4-layer OLMo 3: OLMo 2's layers (norms
after the sub-layers, whole-projection QK-norm), 3 sliding : 1 full, a window of 4 shorter than the checks'
8 tokens, so cached decoding runs past it; the layouts; and LoRA training through the train step."""

from __future__ import annotations

import numpy as np
import pytest
from _lm_checks import *  # noqa: F403  (the shared decoder-LM tests)
from _lm_checks import LM, T, make_lm
from _tiny_training import lora_trains

from jaxlm.config import ConfigError
from jaxlm.models import olmo2

OLMO3_4 = olmo2.PRESETS["olmo3-tiny"].config.replace(n_layers=4, attn_pattern=("local", "local", "local", "global"))


@pytest.fixture(scope="module")
def lm() -> LM:
    # OLMo 3's layers are OLMo 2's plus the window, so one 4-layer OLMo 3 runs both: three windowed layers and
    # a full-attention one (an OLMo 2 layer)
    cfg = OLMO3_4
    assert cfg.local_layers == (True, True, True, False) and cfg.sliding_window < T
    return make_lm(olmo2, cfg)


def test_olmo2_parameter_layout():
    cfg = olmo2.PRESETS["olmo2-tiny"].config
    layers = olmo2.spec(cfg)["layers"]
    assert set(layers) == {"attn", "post_norm1", "mlp", "post_norm2"}  # no norm on the sub-layers' inputs
    a = layers["attn"]
    assert a["q_norm"]["scale"].shape == (2, 4, 16) and a["k_norm"]["scale"].shape == (2, 2, 16)  # whole [H, K]
    assert all("b" not in a[x] for x in "qkvo") and "lm_head" in olmo2.spec(cfg)
    seven = olmo2.PRESETS["olmo3-7b"].config
    assert seven.sliding_window == 4096 and seven.local_layers[:8] == (True, True, True, False) * 2
    assert not any(olmo2.PRESETS["olmo2-7b"].config.local_layers)
    with pytest.raises(ConfigError, match=r"pre_norms=False with post_norms=False leaves the blocks without a norm"):
        cfg.replace(post_norms=False)


def test_lora_adapts_every_projection_and_trains():
    cfg = olmo2.PRESETS["olmo2-tiny"].config
    paths, losses, ref, zero_b = lora_trains(olmo2, cfg, steps=4)
    assert paths == [f"layers/attn/{x}" for x in ("k", "o", "q", "v")] + [
        "layers/mlp/wi_0", "layers/mlp/wi_1", "layers/mlp/wo"]
    np.testing.assert_allclose(zero_b, ref, atol=1e-6)  # B = 0: the base model (up to XLA's fusion order)
    assert losses[-1] < losses[0], losses
