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
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlm.fileio import write_text_atomic

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
CORRUPT = "checkpoints-corrupt"
MANIFEST = "jaxlm-sha256.json"


def _not_disk_full(record: logging.LogRecord) -> bool:
    """Drops Orbax's background-thread reports of a full disk: :class:`DiskFull` reports it in one line."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (_enospc(exc) or "No space left on device" in record.getMessage())


def _ocp():
    import orbax.checkpoint as ocp

    absl = logging.getLogger("absl")
    absl.setLevel(logging.ERROR)  # orbax info/warnings are noise here
    if _not_disk_full not in absl.filters:
        absl.addFilter(_not_disk_full)
    return ocp


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required."""


class StructureMismatch(CheckpointError):
    """A checkpoint that is intact but holds a different tree (optimizer state or params) than the one
    asked for: the settings changed, the checkpoint is fine. ``part`` is "train" or "params"."""

    def __init__(self, step: int, part: str, detail: str):
        self.step, self.part, self.detail = step, part, detail
        super().__init__(f"checkpoint step {step} holds {'optimizer state' if part == 'train' else 'parameters'} "
                         f"of another structure than this run's {'optimizer' if part == 'train' else 'model'}")


class DiskFull(CheckpointError):
    """A save failed for lack of space; the message names the step and the last good checkpoint."""


class IntegrityError(CheckpointError):
    """A checkpoint's files do not match the checksums written when it was saved."""


def _enospc(e: BaseException | None) -> bool:
    """Whether ``e`` or an exception it was raised from is "no space left on device" (Orbax and
    TensorStore wrap the OSError, sometimes only in the message)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _files(step_dir: Path) -> dict[str, Path]:
    """The data files of a checkpoint: those of its items (params/, train/, meta/); Orbax's own metadata
    files at the top of the step directory may be rewritten after the save."""
    return {str(p.relative_to(step_dir)): p for p in sorted(step_dir.rglob("*"))
            if p.is_file() and len(p.relative_to(step_dir).parts) > 1}


def write_manifest(step_dir: Path) -> None:
    """Record the SHA-256 of every file of a completed checkpoint in ``step_dir/MANIFEST``."""
    files = {k: _digest(p) for k, p in _files(step_dir).items()}
    write_text_atomic(step_dir / MANIFEST, json.dumps({"sha256": files}, indent=0, sort_keys=True))


def verify(step_dir: Path) -> bool:
    """Check ``step_dir`` against its manifest: True when it matches, False when there is no manifest
    (saved by an older jaxlm, or killed between the save and the manifest); IntegrityError otherwise."""
    f = step_dir / MANIFEST
    if not f.is_file():
        return False
    try:
        want = json.loads(f.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"its checksum manifest {f.name} is unreadable ({e})") from None
    have = _files(step_dir)
    missing = sorted(set(want) - set(have))
    if missing:
        raise IntegrityError(f"{len(missing)} file(s) missing, e.g. {missing[0]}")
    bad = [k for k, d in want.items() if _digest(have[k]) != d]
    if bad:
        raise IntegrityError(f"checksum mismatch in {len(bad)} file(s), e.g. {bad[0]}")
    return True


class Checkpointer:
    """An Orbax ``CheckpointManager`` for ``RUN_DIR/checkpoints``: async saves, keep the last
    ``keep_checkpoints`` plus the best by ``best_metric`` (when set), restore with corruption fallback."""

    def __init__(self, run_dir: str | Path, keep: int = 3, best_metric: str = "", best_mode: str = "min",
                 async_save: bool = True, read_only: bool = False, report=print):
        ocp = _ocp()
        self.run_dir = Path(run_dir)
        self.dir = (self.run_dir / CHECKPOINTS).absolute()
        self.report = report
        self.best_metric = best_metric
        self.best_mode = best_mode
        self._report_partial()
        self._pending: list[int] = []  # saves started whose checksum manifest is not written yet
        self._failed = False  # save() raised DiskFull (close() does not raise it again)
        pp = ocp.checkpoint_managers
        policies, best = [pp.LatestN(n=keep)], {}
        if best_metric:
            worst = float("inf") if best_mode == "min" else float("-inf")

            def metric(m):  # steps saved without this metric (another best_metric) rank last
                return m.get(best_metric, worst)

            policies.append(pp.BestN(get_metric_fn=metric, reverse=best_mode == "min", n=1,
                                     keep_checkpoints_without_metrics=False))
            # best_fn makes Orbax write each step's metrics to disk (without it they live only in this
            # process, so a resumed run would forget which checkpoint was best and could delete it)
            best = {"best_fn": metric, "best_mode": best_mode}
        opts = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies), enable_async_checkpointing=async_save,
            create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only, **best)
        self.manager = ocp.CheckpointManager(self.dir, options=opts)

    def _report_partial(self) -> None:
        if self.dir.is_dir():
            for p in sorted(self.dir.iterdir()):
                if p.is_dir() and "tmp" in p.name:
                    self.report(f"checkpoint: {p.name} is a partial (unfinished) save; ignored and removed.")

    # --------------------------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the best ``best_metric`` (lowest for ``best_mode="min"``, highest for "max";
        the newest on ties, as Orbax's BestN keeps), or None when no kept step recorded that metric."""
        step = self.manager.best_step() if self.best_metric else None
        return step if step is not None and self.best_metric in (self.manager.metrics(step) or {}) else None

    def _resolve(self, step: int | str | None) -> int | None:
        """``step`` as an int: ``"best"`` -> :meth:`best_step`, ``"latest"``/None -> None (newest good)."""
        if step is None or step == "latest":
            return None
        if step == "best":
            best = self.best_step()
            if best is None:
                why = ("the run keeps no best checkpoint (train.best_metric is empty)" if not self.best_metric
                       else f"no checkpoint in {self.dir} recorded {self.best_metric!r} (it is saved with the "
                            f"checkpoints taken right after an evaluation; see train.eval_every)")
                raise CheckpointError(f"step 'best': {why}; pass a step number or 'latest' instead.")
            return best
        if isinstance(step, bool) or not isinstance(step, int | np.integer):
            raise CheckpointError(f"step must be a step number, 'best' or 'latest', got {step!r}.")
        steps = self.steps()
        if int(step) not in steps:
            raise CheckpointError(f"{self.dir} has no checkpoint at step {step}; it has steps {steps} "
                                  f"(or use 'best' / 'latest').")
        return int(step)

    def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> bool:
        """Start saving ``state`` (a plain-layout TrainState) at update ``step`` (async unless disabled).
        Returns False (and saves nothing) when that step is already saved. Raises :class:`DiskFull` when
        this save or the previous (async) one ran out of space."""
        if step in self.manager.all_steps():
            return False
        try:
            self._save(step, state, meta, metrics)
        except DiskFull:
            self._failed = True
            raise
        return True

    def _save(self, step: int, state, meta: dict, metrics: dict | None) -> None:
        ocp = _ocp()
        self._finish()
        rest = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
        metrics = {k: float(v) for k, v in (metrics or {}).items()
                   if k == self.best_metric and np.isfinite(v)} or None
        self._pending.append(step)
        try:
            self.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(state.params),
                                                            train=ocp.args.StandardSave(rest),
                                                            meta=ocp.args.JsonSave(dict(meta, step=step))),
                              metrics=metrics)
        except Exception as e:  # noqa: BLE001 - only a full disk is translated, the rest re-raised
            self._raise_if_full(e)
            raise

    def _raise_if_full(self, e: BaseException) -> None:
        if not _enospc(e):
            return
        step = self._pending[-1] if self._pending else None
        # TensorStore's failed writes also end as asyncio futures nobody awaits, which asyncio would print
        # (tracebacks at exit) after the one line this error is reported as
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        good = [s for s in self._complete_steps() if s not in self._pending]
        last = (f"the last good checkpoint is step {max(good)} in {self.dir}; free space and rerun the same "
                f"command to resume from it" if good else "no checkpoint was completed before it")
        raise DiskFull(f"no space left on device while saving step {step}; {last}.") from None

    def _complete_steps(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.dir.iterdir()
                      if p.is_dir() and p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists())

    def _finish(self) -> None:
        """Wait for the save in flight, then write the checksum manifest of every save now complete."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._raise_if_full(e)
            raise
        if self._pending and jax.process_index() == 0:  # process 0 writes RUN_DIR's files
            for step in self._pending:
                d = self.dir / str(step)
                if d.is_dir():  # not already dropped by the keep policy
                    write_manifest(d)
        self._pending.clear()

    def wait(self) -> None:
        try:
            self._finish()
        except DiskFull:
            self._failed = True
            raise

    def close(self) -> None:
        try:
            self._finish()
        except CheckpointError:
            if not self._failed:  # a disk-full error already raised by save() is not raised again
                raise
        finally:
            self.manager.close()

    # --------------------------------------------------------------------------------------------------
    def _quarantine(self, step: int, err: Exception) -> None:
        src = self.dir / str(step)
        parent = self.run_dir / CORRUPT
        dst, n = parent / str(step), 0
        while dst.exists():  # an earlier quarantined checkpoint of the same step is kept, never replaced
            n += 1
            dst = parent / f"{step}.{n}"
        self.report(f"checkpoint: step {step} in {src} failed verification ({type(err).__name__}: "
                    f"{str(err).splitlines()[0][:200]}); moved to {dst}, trying an older one.")
        parent.mkdir(parents=True, exist_ok=True)
        if src.exists():
            shutil.move(str(src), str(dst))
        self.manager.reload()

    def _read(self, step: int, **items) -> dict:
        ocp = _ocp()
        return self.manager.restore(step, args=ocp.args.Composite(**items))

    def _mismatch(self, step: int, a, verified: bool, err: Exception,
                  settings_changed: bool) -> StructureMismatch | None:
        """After a failed restore of ``step``: a :class:`StructureMismatch` when the checkpoint is intact
        and only its tree differs from ``a``, None when it is damaged. Intact means its checksums verified,
        or (an unsealed checkpoint) its params read back and the run's settings changed."""
        ocp = _ocp()
        why = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        try:
            params = self._read(step, params=ocp.args.StandardRestore(a.params))["params"]
            _check_finite(params, step)
        except Exception:  # noqa: BLE001 - the params do not fit (or cannot be read) either
            return StructureMismatch(step, "params", why) if verified else None
        return StructureMismatch(step, "train", why) if verified or settings_changed else None

    def restore(self, abstract_state, step: int | str | None = None,
                settings_changed: bool = False) -> tuple[Any, dict] | None:
        """Restore the newest good checkpoint (or ``step``) into ``abstract_state`` (a TrainState of
        ``ShapeDtypeStruct`` with the target shardings). Returns (state, meta) or None when there is none.
        Each checkpoint is verified against its checksums first; one that fails is reported, moved aside,
        and older ones tried. A checkpoint that is intact but does not fit ``abstract_state`` raises
        :class:`StructureMismatch` and nothing is moved (``settings_changed``: the caller knows the run's
        settings changed, which lets an unsealed checkpoint count as intact when its params read back).
        ``step`` may also be ``"best"`` (by ``best_metric``) or ``"latest"``."""
        ocp = _ocp()
        step = self._resolve(step)
        a = abstract_state
        rest = {"opt_state": a.opt_state, "step": a.step, "rng": a.rng}
        candidates = [step] if step is not None else list(reversed(self.steps()))
        for s in candidates:
            verified = False
            try:
                verified = verify(self.dir / str(s))
                out = self._read(s, params=ocp.args.StandardRestore(a.params),
                                 train=ocp.args.StandardRestore(rest), meta=ocp.args.JsonRestore())
                meta = dict(out["meta"])
                _check_finite(out["params"], s)
            except Exception as e:  # noqa: BLE001 - any failure to read means this checkpoint is unusable
                if not isinstance(e, IntegrityError):
                    mismatch = self._mismatch(s, a, verified, e, settings_changed)
                    if mismatch is not None:
                        raise mismatch from e
                if step is not None:
                    raise CheckpointError(f"checkpoint step {s} in {self.dir} cannot be restored: {e}") from e
                self._quarantine(s, e)
                continue
            if not verified:
                self.report(f"checkpoint: step {s} has no checksum manifest (saved by an older jaxlm, or the run stopped "
                            f"right after saving it); restored without verification.")
            tr = out["train"]
            self.restored_meta = meta  # the data position (a streaming run's stream state) of the restore
            return a.replace(params=out["params"], opt_state=tr["opt_state"], step=tr["step"], rng=tr["rng"]), meta
        return None

    def restore_params(self, abstract_params, step: int | str | None = None) -> tuple[Any, int]:
        """Only the parameters (inference, evaluation, fine-tuning): (params, step), newest good step by
        default, or ``step`` (a number, ``"best"`` by ``best_metric``, ``"latest"``). Checkpoints that
        fail verification are reported and skipped (not moved: readers may not own the run). Raises
        CheckpointError when none can be read."""
        ocp = _ocp()
        step = self._resolve(step)
        candidates = [step] if step is not None else list(reversed(self.steps()))
        if not candidates:
            raise CheckpointError(f"{self.dir} holds no checkpoint; train the run first (jaxlm train ...).")
        errors = []
        for s in candidates:
            try:
                verify(self.dir / str(s))
                out = self._read(s, params=ocp.args.StandardRestore(abstract_params))
                _check_finite(out["params"], s)
                return out["params"], s
            except Exception as e:  # noqa: BLE001
                why = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                errors.append(f"step {s}: {why}")
                self.report(f"checkpoint: step {s} cannot be restored ({why}); trying an older one.")
        raise CheckpointError(f"no checkpoint in {self.dir} can be restored: " + "; ".join(errors))


def saved_steps(run_dir: str | Path) -> list[int]:
    """The steps of the completed checkpoints in ``run_dir`` (no Orbax manager needed)."""
    d = Path(run_dir) / CHECKPOINTS
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())


def _check_finite(params, step: int) -> None:
    bad = [k for k, v in jax.tree_util.tree_leaves_with_path(params)
           if np.issubdtype(np.dtype(v.dtype), np.floating) and not bool(np.isfinite(np.asarray(v)).all())]
    if bad:
        raise ValueError(f"checkpoint step {step} holds non-finite parameters at {jax.tree_util.keystr(bad[0])}")
