"""Every fault of the run directory is one line before data loading or compilation, and nothing is written
(jaxlm/train/preflight.py); a fresh start keeps an earlier start's logs instead of overwriting them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from jaxlm import cli
from jaxlm.data import pipeline
from jaxlm.train import preflight
from tests.faults.test_cli_errors import can_make_read_only, error_line, train_args
from tests.train.conftest import REPO


@pytest.fixture
def no_data(monkeypatch):
    """Loading data fails the test: the fault must be found before it."""
    def prepare(*a, **kw):
        raise AssertionError("data was loaded before the run directory's fault was found")

    monkeypatch.setattr(pipeline, "prepare", prepare)


def tree(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []


def test_file_where_checkpoints_should_be(experiment, tmp_path, capsys, no_data):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("not a directory")
    assert cli.main(train_args(experiment, run_dir)) == 2
    assert error_line(capsys, "jaxlm train") == (
        f"jaxlm train: error: {run_dir / 'checkpoints'} is a file where the run's checkpoint directory should "
        f"be; move it away or choose another --run-dir.")
    assert tree(run_dir) == ["checkpoints"]


def test_file_where_checkpoints_should_be_whole_stderr(experiment, tmp_path):
    """The real command in its own process: stderr is that one line, from no thread a traceback or an
    Orbax log (it used to train to the first save and print 30 lines from Orbax's thread)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("x")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"} | {"JAXLM_DEBUG": ""}
    p = subprocess.run([sys.executable, "-m", "jaxlm.cli", *train_args(experiment, run_dir)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.splitlines() == [
        f"jaxlm train: error: {run_dir / 'checkpoints'} is a file where the run's checkpoint directory should "
        f"be; move it away or choose another --run-dir."], p.stderr
    assert tree(run_dir) == ["checkpoints"]


def test_read_only_run_dir(experiment, tmp_path, capsys, no_data):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if not can_make_read_only(run_dir):
        pytest.skip("cannot make a directory read-only here (no chattr +i)")
    try:
        assert cli.main(train_args(experiment, run_dir)) == 2
        line = error_line(capsys, "jaxlm train")
    finally:
        subprocess.run(["chattr", "-i", str(run_dir)], check=True)
    assert line == (f"jaxlm train: error: run directory {run_dir} is not writable (Operation not permitted); "
                    f"make it writable or choose another --run-dir.")
    assert tree(run_dir) == []


def test_read_only_parent_of_a_new_run_dir(experiment, tmp_path, capsys, no_data, monkeypatch):
    """A run directory still to be created, under a directory that refuses writes (as a read-only mount)."""
    parent = tmp_path / "ro"
    parent.mkdir()
    write_text = Path.write_text

    def read_only(self, *a, **kw):
        if self.parent == parent:
            raise OSError(30, "Read-only file system", str(self))
        return write_text(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", read_only)
    assert cli.main(train_args(experiment, parent / "a" / "run")) == 2
    assert error_line(capsys, "jaxlm train") == (
        f"jaxlm train: error: parent directory {parent} is not writable (Read-only file system); make it "
        f"writable or choose another --run-dir.")
    assert tree(parent) == []


def test_missing_parent_that_is_a_file(experiment, tmp_path, capsys, no_data):
    (tmp_path / "notes.txt").write_text("x")
    run_dir = tmp_path / "notes.txt" / "runs" / "a"
    assert cli.main(train_args(experiment, run_dir)) == 2
    assert error_line(capsys, "jaxlm train") == (
        f"jaxlm train: error: --run-dir {run_dir}: {tmp_path / 'notes.txt'} is a file, not a directory, so the "
        f"run directory cannot be created; fix the path or choose another --run-dir.")


def test_missing_parents_are_created(tmp_path):
    """A new run directory under directories that do not exist yet (``runs/exp1`` in a fresh checkout)."""
    assert preflight.check_path(tmp_path / "runs" / "exp1") == tmp_path


def test_full_disk_is_refused_with_the_sizes(experiment, tmp_path, capsys, no_data, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: usage(10 * 2**20, 10 * 2**20 - 4096, 4096))
    run_dir = tmp_path / "run"
    assert cli.main(train_args(experiment, run_dir)) == 2
    line = error_line(capsys, "jaxlm train")
    assert line.startswith(f"jaxlm train: error: not enough free disk space for a checkpoint in {run_dir}: "
                           f"one checkpoint of this run takes ")
    assert f"the disk holding {tmp_path} has 0.0 MiB free; free space or choose another --run-dir." in line
    assert not run_dir.exists()


def test_checkpoint_bytes_is_params_plus_adam_moments():
    from jaxlm import params as P
    from jaxlm.models import family_of
    from jaxlm.train import config as C

    run = C.RunConfig(model="gpt2-tiny")
    n = P.count(family_of(run.model).spec(run.model))
    # float32 params + AdamW's two float32 moments (+ the schedule's scalar counters)
    assert 12 * n <= preflight.checkpoint_bytes(run) <= 12 * n + 64


def test_fresh_start_keeps_the_earlier_logs(experiment, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "tb").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 7, "loss": 1.5}) + "\n")
    (run_dir / "tb" / "events.out").write_text("old events")
    assert cli.main(train_args(experiment, run_dir)) == 0
    out = capsys.readouterr().out
    kept = sorted((run_dir / "history").iterdir())
    assert len(kept) == 1
    assert f"{run_dir} holds the logs of an earlier start that left no checkpoint (metrics.jsonl, tb); kept " \
           f"in {kept[0]}, this run starts fresh." in out
    assert json.loads((kept[0] / "metrics.jsonl").read_text()) == {"step": 7, "loss": 1.5}
    assert (kept[0] / "tb" / "events.out").read_text() == "old events"
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["step"] <= 2 for r in rows)  # the new run's own rows only
    # resuming (a checkpoint now exists) continues the logs in place: nothing more is moved
    assert cli.main(train_args(experiment, run_dir, "train.steps=3")) == 0
    assert len(list((run_dir / "history").iterdir())) == 1
