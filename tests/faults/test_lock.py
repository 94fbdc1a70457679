"""One writer per run directory: a second `jaxlm train` on a directory in use fails at once naming the holder;
the lock goes with its holder on any exit (kill -9 included), and the processes of one job share it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from jaxlm import cli
from jaxlm.fileio import LOCK_FILE, RunDirLocked, RunLock
from jaxlm.train import config as C
from jaxlm.train import setup as setup_mod
from tests.train.conftest import REPO

HOLD = "import sys, time; from jaxlm.fileio import RunLock; RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(600)"


def hold_in_subprocess(run_dir: Path) -> subprocess.Popen:
    """Another process (importing only jaxlm.fileio: fast) holding the lock of ``run_dir``."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.stdout.readline().strip() == "locked"
    return p


def test_the_lock_names_its_holder_and_is_released(tmp_path: Path):
    with RunLock(tmp_path) as lock:
        assert lock.held and (tmp_path / LOCK_FILE).exists()
        with pytest.raises(RunDirLocked, match=f"in use by another jaxlm process \\(PID {os.getpid()} on host "
                                               f"{socket.gethostname()}, since "):
            RunLock(tmp_path)
    assert not lock.held and not (tmp_path / LOCK_FILE).exists()
    RunLock(tmp_path).release()  # free again


def test_a_stale_lock_of_a_killed_process_is_taken_over(tmp_path: Path):
    p = hold_in_subprocess(tmp_path)
    try:
        with pytest.raises(RunDirLocked, match=f"PID {p.pid} on host {socket.gethostname()}"):
            RunLock(tmp_path)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert f"PID {p.pid}" in (tmp_path / LOCK_FILE).read_text()  # the file stays: no handler ran ...
    with RunLock(tmp_path):  # ... but its flock went with the process
        assert f"PID {os.getpid()}" in (tmp_path / LOCK_FILE).read_text()


def test_second_jaxlm_train_on_a_busy_run_dir_fails_at_once(experiment: Path, tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    p = hold_in_subprocess(run_dir)
    try:
        t0 = time.perf_counter()
        rc = cli.main(["train", str(experiment), "--run-dir", str(run_dir)])
        took = time.perf_counter() - t0
    finally:
        p.kill()
        p.wait()
    err = capsys.readouterr().err
    assert rc == 2 and took < 10
    assert err.splitlines() == [
        f"jaxlm train: error: {run_dir} is in use by another jaxlm process (PID {p.pid} on host "
        f"{socket.gethostname()}, since {err.split(', since ')[1].split(')')[0]}); wait for it to end or stop "
        f"it, or choose another --run-dir."]
    assert sorted(x.name for x in run_dir.iterdir()) == [LOCK_FILE]  # nothing written: no config.json


def test_kill9_of_a_training_process_frees_its_run_dir(experiment: Path, tmp_path: Path, capsys):
    """A real `jaxlm train` holds the directory while it runs (a second one is refused, naming its PID);
    after kill -9 the next run takes the lock."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-m", "tests.train.run_with_fault", "hooks:2", "--", "train",
                          str(experiment), "train.steps=4", "--run-dir", str(run_dir)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:
            if "fault injection: blocking" in line:
                break
        assert cli.main(["train", str(experiment), "train.steps=4", "--run-dir", str(run_dir)]) == 2
        assert f"(PID {p.pid} on host {socket.gethostname()}" in capsys.readouterr().err
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert f"PID {p.pid}" in (run_dir / LOCK_FILE).read_text()  # left behind, but stale
    with RunLock(run_dir):  # what the next `jaxlm train` takes first
        pass


def test_other_processes_of_the_same_job_are_not_blocked(experiment: Path, tmp_path: Path, monkeypatch):
    """Only process 0 of a multi-process job takes the lock (the 2-process `jaxlm train` run of
    tests/sharding/test_multidevice.py shares one directory end to end); here process 1's setup goes ahead
    while process 0 holds it."""
    run_dir = tmp_path / "run"
    cfg = C.apply_overrides(C.load_experiment(experiment), ["train.steps=2"])
    run_dir.mkdir()
    with RunLock(run_dir):  # process 0's lock
        monkeypatch.setattr(jax, "process_index", lambda: 1)
        s, _ = setup_mod.setup(cfg, run_dir, quiet=True)
        try:
            assert s.lock is None
        finally:
            s.ckpt.close()
