"""``jaxlm train`` (causal LM) with each issue-16 family's tiny preset: a few steps on the tiny corpus, finite
losses, a checkpoint, and ``jaxlm generate`` from the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxlm import cli


# gemma2-tiny (local/global layers, soft-caps, post-norms) in the default suite; the others are slow-marked
@pytest.mark.parametrize("preset", ["gemma2-tiny", *(pytest.param(p, marks=pytest.mark.slow)
                                                     for p in ("gemma-tiny", "phi3-tiny", "gpt3-tiny"))])
def test_jaxlm_train_and_generate_with_the_new_families(preset, tiny_experiment: Path, tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", str(tiny_experiment), f"model.preset={preset}", "model.max_len=32", "train.steps=3",
                     "train.checkpoint_every=3", "train.log_every=1", "--run-dir", str(run_dir), "--quiet"]) == 0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    family = preset.rsplit("-", 1)[0]
    assert json.loads((run_dir / "config.json").read_text())["model"]["__class__"] == f"jaxlm.models.{family}.Config"
    capsys.readouterr()
    assert cli.main(["generate", str(run_dir), "--prompt", "the cat", "--greedy", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()
