"""Choosing a checkpoint by step number, ``best`` (by ``train.best_metric``) or ``latest``."""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import parse_step
from jaxlm.train.checkpoint import Checkpointer, CheckpointError
from jaxlm.train.state import TrainState

LOSSES = {10: 3.0, 20: 1.0, 30: 2.0, 40: 2.5}  # step -> eval_loss: step 20 is best, 30/40 are newest
ABSTRACT = {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}


def _state(step: int) -> TrainState:
    return TrainState(params={"w": jnp.full((3,), float(step))}, opt_state={}, step=jnp.int32(step),
                      rng=jnp.zeros((2,), jnp.uint32))


def _run(tmp_path: Path, mode: str = "min", losses: dict = LOSSES, keep: int = 2) -> Path:
    ck = Checkpointer(tmp_path, keep=keep, best_metric="eval_loss", best_mode=mode, async_save=False)
    for step, loss in losses.items():
        ck.save(step, _state(step), {"note": "test"}, {"eval_loss": loss, "train_loss": 9.0})
    ck.close()
    return tmp_path


def _open(run: Path, **kw) -> Checkpointer:
    return Checkpointer(run, read_only=True, report=lambda m: None, **{"best_metric": "eval_loss"} | kw)


def test_best_checkpoint_is_kept_beyond_latest_n_and_restored_by_name(tmp_path: Path):
    ck = _open(_run(tmp_path))
    assert ck.steps() == [20, 30, 40]  # the last 2, plus the best although it is older
    assert ck.best_step() == 20
    params, step = ck.restore_params(ABSTRACT, "best")
    assert step == 20 and np.array_equal(np.asarray(params["w"]), np.full(3, 20.0))
    assert ck.restore_params(ABSTRACT, "latest")[1] == 40
    assert ck.restore_params(ABSTRACT)[1] == 40
    params, step = ck.restore_params(ABSTRACT, 30)
    assert step == 30 and np.asarray(params["w"])[0] == 30.0
    state, meta = ck.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0)), "best")
    assert int(state.step) == 20 and meta["step"] == 20 and meta["note"] == "test"


def test_best_mode_max_picks_the_highest_metric(tmp_path: Path):
    ck = _open(_run(tmp_path, mode="max"), best_mode="max")
    assert ck.best_step() == 10  # eval_loss 3.0 is the highest
    assert 10 in ck.steps()
    assert ck.restore_params(ABSTRACT, "best")[1] == 10


def test_ties_pick_the_newest_step_the_one_orbax_keeps(tmp_path: Path):
    ck = _open(_run(tmp_path, losses={10: 2.0, 20: 1.0, 30: 1.0}, keep=3))
    assert ck.best_step() == 30
    # the step 'best' names is the one the preservation policy keeps when the older tie is rotated out
    ck = _open(_run(tmp_path / "rotated", losses={10: 2.0, 20: 1.0, 30: 1.0, 40: 3.0}, keep=1))
    assert ck.steps() == [30, 40] and ck.best_step() == 30


def test_best_without_a_metric_names_the_problem(tmp_path: Path):
    run = _run(tmp_path)
    with pytest.raises(CheckpointError, match=r"train.best_metric is empty.*step number or 'latest'"):
        _open(run, best_metric="").restore_params(ABSTRACT, "best")
    with pytest.raises(CheckpointError, match=r"recorded 'eval_accuracy'.*eval_every"):
        _open(run, best_metric="eval_accuracy").restore_params(ABSTRACT, "best")


def test_missing_step_lists_the_steps_there_are(tmp_path: Path):
    ck = _open(_run(tmp_path))
    with pytest.raises(CheckpointError, match=r"no checkpoint at step 10; it has steps \[20, 30, 40\]"):
        ck.restore_params(ABSTRACT, 10)
    with pytest.raises(CheckpointError, match="step number, 'best' or 'latest'"):
        ck.restore_params(ABSTRACT, "newest")


def test_parse_step():
    assert parse_step("best") == "best" and parse_step("latest") == "latest" and parse_step("120") == 120
    with pytest.raises(argparse.ArgumentTypeError, match="'bset' is not a step"):
        parse_step("bset")


def test_best_checkpoint_survives_a_resumed_run(tmp_path: Path):
    """Metrics are written with the checkpoints, so a run that is restarted still knows its best step
    and keeps it while newer checkpoints are rotated out."""
    _run(tmp_path, losses={10: 3.0, 20: 1.0}, keep=1)
    _run(tmp_path, losses={30: 2.0, 40: 2.5, 50: 2.2}, keep=1)  # a resumed run: a new Checkpointer
    ck = _open(tmp_path)
    assert ck.steps() == [20, 50] and ck.best_step() == 20
