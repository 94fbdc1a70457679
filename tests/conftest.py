"""Shared fixtures. Tests run on CPU in float32 and never touch the network (the hub is set offline). The
offline mirror of the hub datasets (the folder ``shared/data`` beside the repository, in CI) is made the
``JAXLM_DATA`` mirror when it exists, so experiments that name hub ids read it; data tests skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
if SHARED_DATA.is_dir():
    os.environ.setdefault("JAXLM_DATA", str(SHARED_DATA))  # jaxlm.data.hub reads hub ids from this mirror


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the repository in CI)")
    return SHARED_DATA
