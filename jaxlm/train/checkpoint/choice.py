"""Which checkpoint: the steps on disk, the kept ones, the best by a metric, and the one a ``--step``
value (a number, ``"best"``, ``"latest"``) names.

Its own module because readers that open no Orbax manager (:func:`saved_steps`, the run pre-flight) and
both restore paths choose steps the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.train.checkpoint.errors import CheckpointError

CHECKPOINTS = "checkpoints"


def saved_steps(run_dir: str | Path) -> list[int]:
    """The steps of the completed checkpoints in ``run_dir`` (no Orbax manager needed)."""
    d = Path(run_dir) / CHECKPOINTS
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())


def complete_steps(ckpt_dir: Path) -> list[int]:
    """Steps in ``ckpt_dir`` whose save finished (Orbax wrote their ``_CHECKPOINT_METADATA``)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt_dir.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists())


def partial_saves(ckpt_dir: Path) -> list[str]:
    """Names of the unfinished saves (Orbax's temporary directories) in ``ckpt_dir``."""
    if not ckpt_dir.is_dir():
        return []
    return [p.name for p in sorted(ckpt_dir.iterdir()) if p.is_dir() and "tmp" in p.name]


def kept_steps(manager: Any) -> list[int]:
    """The steps ``manager`` holds, oldest first."""
    return sorted(manager.all_steps())


def best_step(manager: Any, best_metric: str) -> int | None:
    """The kept step with the best ``best_metric`` (by the manager's ``best_mode``; the newest on ties, as
    Orbax's BestN keeps), or None when no kept step recorded that metric."""
    step = manager.best_step() if best_metric else None
    return step if step is not None and best_metric in (manager.metrics(step) or {}) else None


def resolve(manager: Any, step: int | str | None, best_metric: str, ckpt_dir: Path) -> int | None:
    """``step`` as an int: ``"best"`` -> :func:`best_step`, ``"latest"``/None -> None (newest good), a
    number -> itself when kept. Raises CheckpointError naming what to pass instead."""
    if step is None or step == "latest":
        return None
    if step == "best":
        best = best_step(manager, best_metric)
        if best is None:
            why = ("the run keeps no best checkpoint (train.best_metric is empty)" if not best_metric
                   else f"no checkpoint in {ckpt_dir} recorded {best_metric!r} (it is saved with the "
                        f"checkpoints taken right after an evaluation; see train.eval_every)")
            raise CheckpointError(f"step 'best': {why}; pass a step number or 'latest' instead.")
        return best
    if isinstance(step, bool) or not isinstance(step, int | np.integer):
        raise CheckpointError(f"step must be a step number, 'best' or 'latest', got {step!r}.")
    steps = kept_steps(manager)
    if int(step) not in steps:
        raise CheckpointError(f"{ckpt_dir} has no checkpoint at step {step}; it has steps {steps} "
                              f"(or use 'best' / 'latest').")
    return int(step)


def candidates(manager: Any, step: int | None) -> list[int]:
    """The steps a restore tries, in order: ``[step]``, or (None) every kept step, newest first."""
    return [step] if step is not None else list(reversed(kept_steps(manager)))
