"""Issue 16 (part a) families on their tiny presets: the shared decoder-LM checks on mistral-tiny (a 4-token
window, shorter than the 8-token test sequences, so causality, padding, packing, scan == loop and
cache == recompute all run through the window), plus the Qwen2 and Llama 3.1 layouts."""

from __future__ import annotations

import pytest
from _lm_checks import *  # noqa: F403  (the shared decoder-LM tests)
from _lm_checks import LM, T, make_lm

from jaxlm.models import llama, mistral, qwen2


@pytest.fixture(scope="module")
def lm() -> LM:
    cfg = mistral.PRESETS["mistral-tiny"].config
    assert cfg.sliding_window < T and all(cfg.local_layers)
    return make_lm(mistral, cfg)


def test_layouts_of_the_new_presets():
    q = qwen2.spec(qwen2.PRESETS["qwen2-tiny"].config)["layers"]["attn"]
    assert q["q"]["b"].shape == (2, 4, 16) and q["k"]["b"].shape == (2, 2, 16) and "b" not in q["o"]
    assert "b" not in qwen2.spec(qwen2.PRESETS["qwen2-tiny"].config)["layers"]["mlp"]["wi_0"]
    big = qwen2.PRESETS["qwen2.5-0.5b"].config
    assert big.tie_embeddings and "lm_head" not in qwen2.spec(big)
    m = mistral.PRESETS["mistral-7b"].config
    assert m.sliding_window == 4096 and all(m.local_layers) and m.kv_heads == 8
    c = llama.PRESETS["llama3.1-8b"].config
    assert (c.rope_type, c.rope_factor, c.rope_theta, c.vocab_size) == ("llama3", 8.0, 500000.0, 128256)
    assert not any(llama.PRESETS["llama3.1-8b"].config.local_layers)
