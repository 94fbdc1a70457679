"""Exact resume after kill -9, and corrupt-checkpoint fallback, through the `jaxlm train` command."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.conftest import REPO, cli_env, run_cli


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def ckpt_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_kill9_during_step_15_resumes_from_10_bit_for_bit(tiny_experiment: Path, tmp_path: Path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = ["train", str(tiny_experiment), "--run-dir"]
    r = run_cli(*args, str(full))
    assert r.returncode == 0, r.stderr
    ref = losses(full)
    assert sorted(ref) == list(range(1, 31))

    # the same command with a test hook that hangs inside step 15, killed with SIGKILL (no handler can run)
    hang = [sys.executable, "-m", "tests.train.run_with_fault", "15", "--"]
    env = cli_env()
    p = subprocess.Popen([*hang, *args, str(killed)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        for line in p.stderr:
            if "hanging in step 15" in line:
                break
            assert time.time() < deadline, "the run never reached step 15"
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert ckpt_steps(killed) == [10]
    assert max(losses(killed)) == 14  # steps 1-14 were logged before the kill

    r = run_cli(*args, str(killed))  # rerun the same command: resumes
    assert r.returncode == 0, r.stderr
    assert "resuming from checkpoint step 10" in r.stdout
    got = losses(killed)
    assert sorted(got) == list(range(1, 31))
    for s in range(11, 31):
        assert got[s] == ref[s], f"step {s}: resumed {got[s]!r} != uninterrupted {ref[s]!r}"
    assert ckpt_steps(killed) == ckpt_steps(full)

    # SIGTERM in the same place: the run saves step 14 (state and data position) and exits 143
    termed = tmp_path / "termed"
    p = subprocess.Popen([*hang, *args, str(termed)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:
            if "hanging in step 15" in line:
                break
        p.send_signal(signal.SIGTERM)
    finally:
        p.wait(timeout=60)
    assert p.returncode == 143
    assert ckpt_steps(termed) == [10, 14]
    got = losses(termed)
    assert sorted(got) == list(range(1, 15)) and all(got[s] == ref[s] for s in got)
    meta = json.loads((termed / "checkpoints" / "14" / "meta" / "metadata").read_text())
    assert meta["step"] == 14 and meta["data_position"]["step"] == 14


def test_corrupt_checkpoint_falls_back_to_newest_good(tiny_experiment: Path, tmp_path: Path, step_cache):
    from jaxlm import pretrained
    from jaxlm.train import config as C
    from jaxlm.train.loop import train

    run_dir = tmp_path / "run"
    cfg = C.apply_overrides(C.load_experiment(tiny_experiment), ["train.steps=20"])
    out = train(cfg, run_dir, quiet=True, cache=step_cache)
    assert out["last_checkpoint"] == 20 and ckpt_steps(run_dir) == [10, 20]
    ref20 = losses(run_dir)[20]
    # corrupt step 20: truncate every data file of its params item
    files = [f for f in (run_dir / "checkpoints" / "20" / "params").rglob("*") if f.is_file()]
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3])
    loaded = pretrained.load_run(run_dir)
    assert loaded.extra["step"] == 10  # load_run skips the broken one (and leaves it in place)
    # the trainer reports it, moves it aside, resumes from 10
    out = train(cfg, run_dir, quiet=True, cache=step_cache)
    assert out["resumed_from"] == 10
    assert (run_dir / "checkpoints-corrupt" / "20").is_dir()
    assert ckpt_steps(run_dir) == [10, 20]  # step 20 re-made from the good step 10
    assert losses(run_dir)[20] == ref20
    assert pretrained.load_run(run_dir).extra["step"] == 20
