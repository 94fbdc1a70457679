"""SIGTERM / SIGINT at several points of the step cycle of a real `jaxlm train` process: the step the run
reports as saved is on disk, and resuming from it is exact. A save that fails after a signal is reported as
not written, naming the last good checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxlm.train import config as C
from jaxlm.train.hooks import Hook, Loop
from jaxlm.train.loop import train
from jaxlm.train.setup import StepCache
from tests.train.conftest import EXPERIMENT, REPO, write_corpus

# 12 steps, a checkpoint every 5: steps 5 and 10 are regular saves, 12 the last
BASE = ["train.steps=12", "train.checkpoint_every=5"]


@pytest.fixture(scope="module")
def cache() -> StepCache:
    return StepCache()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("exp")
    exp = d / "tiny.py"
    exp.write_text(EXPERIMENT.format(path=str(write_corpus(d / "corpus.txt"))))
    return exp


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The subprocesses' environment: a persistent XLA cache, so only the first run compiles."""
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla")),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.fixture(scope="module")
def reference(experiment: Path, tmp_path_factory, cache: StepCache) -> dict[int, float]:
    """Every step's loss of the uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    train(C.apply_overrides(C.load_experiment(experiment), BASE), run_dir, quiet=True, cache=cache)
    return losses(run_dir)


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def ckpt_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def start_with_fault(fault: str, experiment: Path, run_dir: Path, overrides: list[str], env: dict,
                     ) -> subprocess.Popen:
    """`jaxlm train` with ``fault`` (tests/train/run_with_fault.py), once it reports being blocked there."""
    p = subprocess.Popen([sys.executable, "-m", "tests.train.run_with_fault", fault, "--", "train", str(experiment),
                          *BASE, *overrides, "--run-dir", str(run_dir)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    for line in p.stderr:
        if "fault injection: blocking" in line:
            return p
        if time.time() > deadline:
            break
    p.kill()
    raise AssertionError(f"the run never reached {fault}: {p.communicate()}")


# (signal, where it lands, overrides, the step that must be saved). With log_every=4, step 7's metrics are
# still on the device when the signal lands ("before the fetch"); with log_every=1 each step's train row is
# logged during its own fetch, where "fetch" blocks.
CASES = [
    pytest.param("SIGTERM", "hooks:7", ["train.log_every=4"], 7, id="SIGTERM-before-fetch"),
    pytest.param("SIGTERM", "fetch:7", [], 7, id="SIGTERM-during-fetch"),
    pytest.param("SIGINT", "hooks:7", [], 7, id="SIGINT-after-fetch"),
    pytest.param("SIGTERM", "save:5", [], 5, id="SIGTERM-during-async-save"),
    pytest.param("SIGINT", "fetch:10", [], 10, id="SIGINT-during-fetch-of-a-checkpoint-step"),
]


@pytest.mark.parametrize("sig, fault, overrides, want", CASES)
def test_signal_saves_the_reported_step_and_resume_is_exact(sig, fault, overrides, want, experiment, env,
                                                            reference, cache, tmp_path):
    run_dir = tmp_path / "run"
    p = start_with_fault(fault, experiment, run_dir, overrides, env)
    try:
        p.send_signal(getattr(signal, sig))
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == (143 if sig == "SIGTERM" else 130), err
    said = re.findall(rf"{sig} received: saved checkpoint step (\d+) in ", out)
    assert said == [str(want)], out
    assert want in ckpt_steps(run_dir) and max(ckpt_steps(run_dir)) == want
    meta = json.loads((run_dir / "checkpoints" / str(want) / "meta" / "metadata").read_text())
    assert meta["step"] == want and meta["data_position"]["step"] == want
    assert "Traceback" not in err

    # rerunning the same command resumes from the reported step and computes the uninterrupted run's losses
    cfg = C.apply_overrides(C.load_experiment(experiment), [*BASE, *overrides])
    res = train(cfg, run_dir, quiet=True, cache=cache)
    assert res["resumed_from"] == want and res["step"] == 12
    got = losses(run_dir)
    every = cfg.train.log_every
    assert sorted(got) == [s for s in range(1, 13) if s % every == 0 or s == 12]
    for s, v in got.items():
        assert v == reference[s], f"step {s}: {v!r} != uninterrupted {reference[s]!r}"


class SignalThenFailingSave(Hook):
    """SIGTERM to this process during step ``step``; every save from then on fails like a full disk."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, loop: Loop) -> None:
        if loop.step != self.step:
            return

        def full_disk(*a, **kw):
            raise OSError(28, "No space left on device")

        loop.setup.ckpt.wait()
        loop.setup.ckpt.save = full_disk
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler runs in this (main) thread at the next bytecode


def test_a_save_that_fails_after_a_signal_is_reported_as_not_written(experiment, cache, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = C.apply_overrides(C.load_experiment(experiment), BASE)
    out = train(cfg, run_dir, cache=cache, hooks=[SignalThenFailingSave(7)])
    said = capsys.readouterr().out
    assert out["interrupted"] == "SIGTERM" and out["step"] == 7
    assert ("SIGTERM received: checkpoint step 7 was NOT written (OSError: [Errno 28] No space left on device); "
            "the last good checkpoint is step 5: rerunning the same command resumes from it.") in said
    assert "saved checkpoint step 7" not in said
    assert ckpt_steps(run_dir) == [5] and out["last_checkpoint"] == 5
    assert not (run_dir / ".lock").exists()
