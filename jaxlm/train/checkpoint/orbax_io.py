"""The Orbax side of a run's checkpoints: Orbax imported quietly, the ``CheckpointManager`` with the
keep policies, and reading items back.

Every use of ``orbax.checkpoint`` goes through here, so its logging is tamed once and the keep policy
(last N plus the best by a metric) is stated in one place.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from jaxlm.train.checkpoint.errors import is_disk_full


def _not_disk_full(record: logging.LogRecord) -> bool:
    """Drops Orbax's background-thread reports of a full disk: :class:`DiskFull` reports it in one line."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (is_disk_full(exc) or "No space left on device" in record.getMessage())


def ocp():
    """``orbax.checkpoint``, with absl's info/warnings (Orbax's noise here) and full-disk reports muted."""
    import orbax.checkpoint as ocp

    absl = logging.getLogger("absl")
    absl.setLevel(logging.ERROR)  # orbax info/warnings are noise here
    if _not_disk_full not in absl.filters:
        absl.addFilter(_not_disk_full)
    return ocp


def open_manager(ckpt_dir: Path, *, keep: int, best_metric: str, best_mode: str, async_save: bool,
                 read_only: bool) -> Any:
    """A ``CheckpointManager`` on ``ckpt_dir`` that keeps the last ``keep`` steps plus, when
    ``best_metric`` is set, the one step with the best value of it (``best_mode`` "min" or "max")."""
    o = ocp()
    pp = o.checkpoint_managers
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
    opts = o.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies), enable_async_checkpointing=async_save,
        create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only, **best)
    return o.CheckpointManager(ckpt_dir, options=opts)


def read(manager: Any, step: int, **items: Any) -> dict:
    """The items of checkpoint ``step`` (each an Orbax restore arg, e.g. ``params=StandardRestore(...)``)."""
    return manager.restore(step, args=ocp().args.Composite(**items))
