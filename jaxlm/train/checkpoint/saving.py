"""Saving checkpoints: an async Orbax save per step, each sealed with its checksum manifest once complete,
and a full disk raised as :class:`DiskFull` naming the last good step.

A class of its own because a save is not over when :meth:`Saver.save` returns: the steps still in flight
(to seal later) and whether a save already failed (so closing does not raise it twice) are its state.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlm.train.checkpoint import orbax_io
from jaxlm.train.checkpoint.choice import complete_steps
from jaxlm.train.checkpoint.errors import CheckpointError, DiskFull, is_disk_full
from jaxlm.train.checkpoint.integrity import write_manifest


class Saver:
    """The saves of one Orbax ``CheckpointManager`` on ``ckpt_dir``; ``best_metric`` is the one metric
    recorded with each step (for the keep-the-best policy)."""

    def __init__(self, manager: Any, ckpt_dir: Path, best_metric: str = ""):
        self.manager, self.dir, self.best_metric = manager, ckpt_dir, best_metric
        self.pending: list[int] = []  # saves started whose checksum manifest is not written yet
        self.failed = False  # save() raised DiskFull (close() does not raise it again)

    def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> bool:
        """Start saving ``state`` (a plain-layout TrainState) at update ``step``. Returns False (and saves
        nothing) when that step is already saved. Raises :class:`DiskFull` when this save or the previous
        (async) one ran out of space."""
        if step in self.manager.all_steps():
            return False
        try:
            self._start(step, state, meta, metrics)
        except DiskFull:
            self.failed = True
            raise
        return True

    def _start(self, step: int, state: Any, meta: dict, metrics: dict | None) -> None:
        """Seal the previous save, then hand this one to Orbax: params, the rest of the state, and meta."""
        ocp = orbax_io.ocp()
        self.finish()
        rest = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
        metrics = {k: float(v) for k, v in (metrics or {}).items()
                   if k == self.best_metric and np.isfinite(v)} or None
        self.pending.append(step)
        try:
            self.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(state.params),
                                                            train=ocp.args.StandardSave(rest),
                                                            meta=ocp.args.JsonSave(dict(meta, step=step))),
                              metrics=metrics)
        except Exception as e:  # noqa: BLE001 - only a full disk is translated, the rest re-raised
            self._raise_if_full(e)
            raise

    def _raise_if_full(self, e: BaseException) -> None:
        """Raise :class:`DiskFull` (naming the step and the last good one) when ``e`` is a full disk."""
        if not is_disk_full(e):
            return
        step = self.pending[-1] if self.pending else None
        # TensorStore's failed writes also end as asyncio futures nobody awaits, which asyncio would print
        # (tracebacks at exit) after the one line this error is reported as
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        good = [s for s in complete_steps(self.dir) if s not in self.pending]
        last = (f"the last good checkpoint is step {max(good)} in {self.dir}; free space and rerun the same "
                f"command to resume from it" if good else "no checkpoint was completed before it")
        raise DiskFull(f"no space left on device while saving step {step}; {last}.") from None

    def finish(self) -> None:
        """Wait for the save in flight, then write the checksum manifest of every save now complete."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._raise_if_full(e)
            raise
        if self.pending and jax.process_index() == 0:  # process 0 writes RUN_DIR's files
            for step in self.pending:
                d = self.dir / str(step)
                if d.is_dir():  # not already dropped by the keep policy
                    write_manifest(d)
        self.pending.clear()

    def wait(self) -> None:
        """:meth:`finish`, remembering a :class:`DiskFull` so :meth:`close` does not raise it again."""
        try:
            self.finish()
        except DiskFull:
            self.failed = True
            raise

    def close(self) -> None:
        """Finish the saves and close the manager; a disk-full error already raised is not raised again."""
        try:
            self.finish()
        except CheckpointError:
            if not self.failed:
                raise
        finally:
            self.manager.close()
