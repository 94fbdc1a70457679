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
A checkpoint that fails to restore (truncated or missing files) is reported, moved to
``RUN_DIR/checkpoints-corrupt/<step>`` and the next newer-to-older one is tried. The loop never saves a
state whose loss was NaN/inf, so no good checkpoint is ever replaced by a broken one.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
CORRUPT = "checkpoints-corrupt"


def _ocp():
    import orbax.checkpoint as ocp

    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax info/warnings are noise here
    return ocp


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required."""


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
        Returns False (and saves nothing) when that step is already saved."""
        ocp = _ocp()
        if step in self.manager.all_steps():
            return False
        rest = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
        metrics = {k: float(v) for k, v in (metrics or {}).items()
                   if k == self.best_metric and np.isfinite(v)} or None
        self.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(state.params),
                                                        train=ocp.args.StandardSave(rest),
                                                        meta=ocp.args.JsonSave(dict(meta, step=step))),
                          metrics=metrics)
        return True

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # --------------------------------------------------------------------------------------------------
    def _quarantine(self, step: int, err: Exception) -> None:
        src = self.dir / str(step)
        dst = self.run_dir / CORRUPT / str(step)
        self.report(f"checkpoint: step {step} in {src} cannot be restored ({type(err).__name__}: "
                    f"{str(err).splitlines()[0][:200]}); moved to {dst}, trying an older one.")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            shutil.rmtree(dst)
        if src.exists():
            shutil.move(str(src), str(dst))
        self.manager.reload()

    def restore(self, abstract_state, step: int | str | None = None) -> tuple[Any, dict] | None:
        """Restore the newest good checkpoint (or ``step``) into ``abstract_state`` (a TrainState of
        ``ShapeDtypeStruct`` with the target shardings). Returns (state, meta) or None when there is none.
        Unreadable checkpoints are reported, moved aside, and older ones tried. ``step`` may also be
        ``"best"`` (by ``best_metric``) or ``"latest"``."""
        ocp = _ocp()
        step = self._resolve(step)
        a = abstract_state
        rest = {"opt_state": a.opt_state, "step": a.step, "rng": a.rng}
        candidates = [step] if step is not None else list(reversed(self.steps()))
        for s in candidates:
            try:
                out = self.manager.restore(s, args=ocp.args.Composite(
                    params=ocp.args.StandardRestore(a.params), train=ocp.args.StandardRestore(rest),
                    meta=ocp.args.JsonRestore()))
                meta = dict(out["meta"])
                _check_finite(out["params"], s)
            except Exception as e:  # noqa: BLE001 - any failure to read means this checkpoint is unusable
                if step is not None:
                    raise CheckpointError(f"checkpoint step {s} in {self.dir} cannot be restored: {e}") from e
                self._quarantine(s, e)
                continue
            tr = out["train"]
            return a.replace(params=out["params"], opt_state=tr["opt_state"], step=tr["step"], rng=tr["rng"]), meta
        return None

    def restore_params(self, abstract_params, step: int | str | None = None) -> tuple[Any, int]:
        """Only the parameters (inference, evaluation, fine-tuning): (params, step), newest good step by
        default, or ``step`` (a number, ``"best"`` by ``best_metric``, ``"latest"``). Raises
        CheckpointError when none can be read."""
        ocp = _ocp()
        step = self._resolve(step)
        candidates = [step] if step is not None else list(reversed(self.steps()))
        if not candidates:
            raise CheckpointError(f"{self.dir} holds no checkpoint; train the run first (jaxlm train ...).")
        errors = []
        for s in candidates:
            try:
                out = self.manager.restore(s, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
                _check_finite(out["params"], s)
                return out["params"], s
            except Exception as e:  # noqa: BLE001
                errors.append(f"step {s}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                self.report(f"checkpoint: step {s} cannot be restored; trying an older one.")
        raise CheckpointError(f"no checkpoint in {self.dir} can be restored: " + "; ".join(errors))


def _check_finite(params, step: int) -> None:
    bad = [k for k, v in jax.tree_util.tree_leaves_with_path(params)
           if np.issubdtype(np.dtype(v.dtype), np.floating) and not bool(np.isfinite(np.asarray(v)).all())]
    if bad:
        raise ValueError(f"checkpoint step {step} holds non-finite parameters at {jax.tree_util.keystr(bad[0])}")
