"""`jaxlm train` (in-process CLI) trains the issue-16a families' tiny presets on the causal LM task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxlm import cli


@pytest.mark.parametrize("preset", ["qwen2-tiny", "mistral-tiny", "llama3.1-tiny"])
def test_jaxlm_train_runs_each_new_family(tiny_experiment: Path, tmp_path: Path, preset):
    run_dir = tmp_path / preset
    rc = cli.main(["train", str(tiny_experiment), f"model.preset={preset}", "train.steps=3", "data.seq_len=16",
                   "train.batch_size=4", "train.checkpoint_every=0", "--run-dir", str(run_dir), "--quiet"])
    assert rc == 0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(x == x for x in losses)
    cfg = json.loads((run_dir / "config.json").read_text())["model"]
    assert cfg["__class__"].split(".")[-2] in ("qwen2", "mistral", "llama")
