"""Fixtures of the fault tests: JAXLM_DEBUG off (errors are one line, as users see them) and a tiny experiment."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.conftest import EXPERIMENT, write_corpus


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    # set (to "off") through monkeypatch, so that the value `jaxlm --debug` sets is undone after the test
    monkeypatch.setenv("JAXLM_DEBUG", "")


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """A tiny GPT-2 experiment file (and its corpus) in ``tmp_path``."""
    exp = tmp_path / "tiny.py"
    exp.write_text(EXPERIMENT.format(path=str(write_corpus(tmp_path / "corpus.txt"))))
    return exp
