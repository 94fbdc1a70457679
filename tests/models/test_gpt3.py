"""gpt3 tiny preset: the shared decoder-LM checks (causality, padding, packing, jit == eager, scan == loop,
KV-cache decoding == the full forward past the window, errors)."""

from __future__ import annotations

import pytest
from _lm_checks import *  # noqa: F403  (the shared decoder-LM tests)
from _lm_checks import LM, make_lm

from jaxlm.models import gpt3


@pytest.fixture(scope="module")
def lm() -> LM:
    # a window shorter than the checks' sequences, so that the band really masks keys
    cfg = gpt3.PRESETS["gpt3-tiny"].config.replace(sliding_window=3)
    assert any(cfg.local_layers) and not all(cfg.local_layers)  # local and global layers both exercised
    return make_lm(gpt3, cfg)
