"""GPT-2: shapes, causality, packing, KV cache, jit/scan parity, gradients, input errors (see _lm_checks)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from _lm_checks import *  # noqa: F403  (the shared decoder-LM tests)
from _lm_checks import LM, make_lm

from jaxlm import count
from jaxlm.models import gpt2


@pytest.fixture(scope="module")
def lm() -> LM:
    return make_lm(gpt2, gpt2.PRESETS["gpt2-tiny"].config)


def test_gpt2_parameter_layout_and_init():
    cfg = gpt2.PRESETS["gpt2-124m"].config
    spec = gpt2.spec(cfg)
    assert "lm_head" not in spec  # tied embeddings
    assert spec["embed"]["positions"].shape == (1024, 768)
    assert spec["layers"]["attn"]["q"]["w"].shape == (12, 768, 12, 64)
    assert count(spec["layers"]) == 12 * 7_087_872  # one GPT-2 small block
    tiny = gpt2.PRESETS["gpt2-tiny"].config
    p = gpt2.init(jax.random.key(0), tiny)
    # residual projections start at std 0.02 / sqrt(2 * n_layers)
    std_o = float(np.std(p["layers"]["attn"]["o"]["w"]))
    std_q = float(np.std(p["layers"]["attn"]["q"]["w"]))
    assert std_q == pytest.approx(0.02, rel=0.1)
    assert std_o == pytest.approx(0.02 / np.sqrt(2 * tiny.n_layers), rel=0.1)
