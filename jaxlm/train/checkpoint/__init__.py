"""Orbax checkpoints of a run (:class:`Checkpointer`); :func:`jaxlm.pretrained.load_run` reads them for
inference, evaluation and fine-tuning.

Layout of a run directory::

    RUN_DIR/config.json        the resolved RunConfig ("model", "train", "data", "mesh")
    RUN_DIR/tokenizer.json     the tokenizer the run was trained with
    RUN_DIR/checkpoints/<step>/{params,train,meta}   one Orbax checkpoint per saved step
    RUN_DIR/metrics.jsonl, loss.png, tb/

Each checkpoint holds three items: ``params`` (the parameter tree), ``train`` (optimizer state, step
counter and the raw RNG key) and ``meta`` (JSON: the update step, the data position, the metrics at that
step). The data order is a function of (seed, step), so (state, step) is everything an exact resume needs.

Safety: Orbax writes each checkpoint into a temporary directory and renames it when complete, so a run
killed mid-save leaves no half-written ``<step>`` directory (the temporary one is reported and removed).
Once a save has completed, a manifest of the SHA-256 of every file (``<step>/jaxlm-sha256.json``) is
written, and every restore checks it first: flipped bits that still decode to finite numbers are caught
there. A checkpoint that fails verification (checksum mismatch, truncated or missing files, non-finite
parameters) is reported, moved to ``RUN_DIR/checkpoints-corrupt/<step>`` (``<step>.1``, ``.2``, ... when
that name is taken: an earlier quarantined folder is never replaced) and the next older one is tried.

A checkpoint that verifies but does not fit the state this run builds (a changed optimizer, grad_accum or
model) is not corrupt: :class:`StructureMismatch` is raised and nothing is moved. The loop never saves a
state whose loss was NaN/inf, so no good checkpoint is ever replaced by a broken one. A save that fails
because the disk is full raises :class:`DiskFull` naming the last good step.

The package, bottom up (one job per module; :class:`Checkpointer` holds the run's manager and passes it
on): :mod:`~jaxlm.train.checkpoint.errors` (the exceptions), :mod:`~jaxlm.train.checkpoint.integrity`
(manifest, verification, quarantine), :mod:`~jaxlm.train.checkpoint.orbax_io` (the Orbax manager and its
keep policy), :mod:`~jaxlm.train.checkpoint.choice` (which step: kept, best, ``--step`` values),
:mod:`~jaxlm.train.checkpoint.saving` (async saves, sealing, a full disk) and
:mod:`~jaxlm.train.checkpoint.restoring` (newest good with fallback, params only, mismatches).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxlm.train.checkpoint import choice, integrity, orbax_io, restoring
from jaxlm.train.checkpoint.choice import CHECKPOINTS, saved_steps
from jaxlm.train.checkpoint.errors import CheckpointError, DiskFull, IntegrityError, StructureMismatch
from jaxlm.train.checkpoint.integrity import CORRUPT, MANIFEST, verify, write_manifest
from jaxlm.train.checkpoint.saving import Saver


class Checkpointer:
    """An Orbax ``CheckpointManager`` for ``RUN_DIR/checkpoints``: async saves, keep the last
    ``keep_checkpoints`` plus the best by ``best_metric`` (when set), restore with corruption fallback."""

    def __init__(self, run_dir: str | Path, keep: int = 3, best_metric: str = "", best_mode: str = "min",
                 async_save: bool = True, read_only: bool = False, report: Callable[[str], Any] = print):
        orbax_io.ocp()
        self.run_dir = Path(run_dir)
        self.dir = (self.run_dir / CHECKPOINTS).absolute()
        self.report = report
        self.best_metric = best_metric
        self.best_mode = best_mode
        for name in choice.partial_saves(self.dir):
            self.report(f"checkpoint: {name} is a partial (unfinished) save; ignored and removed.")
        self.manager = orbax_io.open_manager(self.dir, keep=keep, best_metric=best_metric,
                                             best_mode=best_mode, async_save=async_save, read_only=read_only)
        self._saver = Saver(self.manager, self.dir, best_metric)

    # -- which step --------------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """The kept steps, oldest first."""
        return choice.kept_steps(self.manager)

    def best_step(self) -> int | None:
        """The kept step with the best ``best_metric`` (lowest for ``best_mode="min"``, highest for "max";
        the newest on ties, as Orbax's BestN keeps), or None when no kept step recorded that metric."""
        return choice.best_step(self.manager, self.best_metric)

    def _resolve(self, step: int | str | None) -> int | None:
        """``step`` as an int: ``"best"`` -> :meth:`best_step`, ``"latest"``/None -> None (newest good)."""
        return choice.resolve(self.manager, step, self.best_metric, self.dir)

    # -- saving ------------------------------------------------------------------------------------------
    def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> bool:
        """Start saving ``state`` (a plain-layout TrainState) at update ``step`` (async unless disabled).
        Returns False (and saves nothing) when that step is already saved. Raises :class:`DiskFull` when
        this save or the previous (async) one ran out of space."""
        return self._saver.save(step, state, meta, metrics)

    def wait(self) -> None:
        """Wait for the save in flight and seal every completed save with its checksum manifest."""
        self._saver.wait()

    def close(self) -> None:
        """:meth:`wait`, then close the manager (a :class:`DiskFull` save() raised is not raised again)."""
        self._saver.close()

    # -- restoring ---------------------------------------------------------------------------------------
    def restore(self, abstract_state: Any, step: int | str | None = None,
                settings_changed: bool = False) -> tuple[Any, dict] | None:
        """Restore the newest good checkpoint (or ``step``) into ``abstract_state`` (a TrainState of
        ``ShapeDtypeStruct`` with the target shardings). Returns (state, meta) or None when there is none.
        Each checkpoint is verified against its checksums first; one that fails is reported, moved aside,
        and older ones tried. A checkpoint that is intact but does not fit ``abstract_state`` raises
        :class:`StructureMismatch` and nothing is moved (``settings_changed``: the caller knows the run's
        settings changed, which lets an unsealed checkpoint count as intact when its params read back).
        ``step`` may also be ``"best"`` (by ``best_metric``) or ``"latest"``."""
        step = self._resolve(step)
        candidates = choice.candidates(self.manager, step)
        out = restoring.restore_state(self.manager, self.dir, abstract_state, candidates,
                                      explicit=step is not None, settings_changed=settings_changed,
                                      quarantine=self._quarantine, report=self.report)
        if out is not None:
            self.restored_meta = out[1]  # the data position (a streaming run's stream state) of the restore
        return out

    def restore_params(self, abstract_params: Any, step: int | str | None = None) -> tuple[Any, int]:
        """Only the parameters (inference, evaluation, fine-tuning): (params, step), newest good step by
        default, or ``step`` (a number, ``"best"`` by ``best_metric``, ``"latest"``). Checkpoints that
        fail verification are reported and skipped (not moved: readers may not own the run). Raises
        CheckpointError when none can be read."""
        candidates = choice.candidates(self.manager, self._resolve(step))
        if not candidates:
            raise CheckpointError(f"{self.dir} holds no checkpoint; train the run first (jaxlm train ...).")
        return restoring.restore_params(self.manager, self.dir, abstract_params, candidates, self.report)

    def _quarantine(self, step: int, err: Exception) -> None:
        """Move damaged checkpoint ``step`` to ``RUN_DIR/checkpoints-corrupt`` and forget it."""
        integrity.quarantine(self.run_dir, self.dir / str(step), step, err, self.report)
        self.manager.reload()


__all__ = ["CHECKPOINTS", "CORRUPT", "MANIFEST", "CheckpointError", "Checkpointer", "DiskFull",
           "IntegrityError", "StructureMismatch", "saved_steps", "verify", "write_manifest"]
