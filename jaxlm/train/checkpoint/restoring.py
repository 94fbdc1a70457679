"""Restoring checkpoints: the newest good train state (verified, damaged ones moved aside, older ones
tried), only the parameters (for readers that do not own the run), and telling a changed run's
checkpoint (:class:`StructureMismatch`) from a damaged one.

Split from saving because the two share nothing but the files: restoring decides what a failure means
(damage, a mismatch, an explicit step that cannot be read) and what happens to the checkpoint then.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxlm.train.checkpoint import orbax_io
from jaxlm.train.checkpoint.errors import CheckpointError, IntegrityError, StructureMismatch
from jaxlm.train.checkpoint.integrity import check_finite, verify


def _why(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"


def structure_mismatch(manager: Any, step: int, a: Any, verified: bool, err: Exception,
                       settings_changed: bool) -> StructureMismatch | None:
    """After a failed restore of ``step``: a :class:`StructureMismatch` when the checkpoint is intact
    and only its tree differs from ``a`` (the abstract TrainState), None when it is damaged. Intact
    means its checksums verified, or (an unsealed checkpoint) its params read back and the run's settings
    changed."""
    ocp = orbax_io.ocp()
    why = _why(err)
    try:
        params = orbax_io.read(manager, step, params=ocp.args.StandardRestore(a.params))["params"]
        check_finite(params, step)
    except Exception:  # noqa: BLE001 - the params do not fit (or cannot be read) either
        return StructureMismatch(step, "params", why) if verified else None
    return StructureMismatch(step, "train", why) if verified or settings_changed else None


def restore_state(manager: Any, ckpt_dir: Path, a: Any, candidates: list[int], *, explicit: bool,
                  settings_changed: bool, quarantine: Callable[[int, Exception], None],
                  report: Callable[[str], Any]) -> tuple[Any, dict] | None:
    """The first of ``candidates`` that restores into ``a`` (a TrainState of ``ShapeDtypeStruct`` with
    the target shardings), as (state, meta), or None when none does. Each is verified first; a damaged one
    is passed to ``quarantine`` and the next tried, unless the step was asked for (``explicit``:
    CheckpointError). An intact one that does not fit ``a`` raises :class:`StructureMismatch`."""
    ocp = orbax_io.ocp()
    rest = {"opt_state": a.opt_state, "step": a.step, "rng": a.rng}
    for s in candidates:
        verified = False
        try:
            verified = verify(ckpt_dir / str(s))
            out = orbax_io.read(manager, s, params=ocp.args.StandardRestore(a.params),
                                train=ocp.args.StandardRestore(rest), meta=ocp.args.JsonRestore())
            meta = dict(out["meta"])
            check_finite(out["params"], s)
        except Exception as e:  # noqa: BLE001 - any failure to read means this checkpoint is unusable
            if not isinstance(e, IntegrityError):
                mismatch = structure_mismatch(manager, s, a, verified, e, settings_changed)
                if mismatch is not None:
                    raise mismatch from e
            if explicit:
                raise CheckpointError(f"checkpoint step {s} in {ckpt_dir} cannot be restored: {e}") from e
            quarantine(s, e)
            continue
        if not verified:
            report(f"checkpoint: step {s} has no checksum manifest (saved by an older jaxlm, or the run stopped "
                   f"right after saving it); restored without verification.")
        tr = out["train"]
        return a.replace(params=out["params"], opt_state=tr["opt_state"], step=tr["step"], rng=tr["rng"]), meta
    return None


def restore_params(manager: Any, ckpt_dir: Path, abstract_params: Any, candidates: list[int],
                   report: Callable[[str], Any]) -> tuple[Any, int]:
    """(params, step) of the first of ``candidates`` that verifies and reads into ``abstract_params``.
    Failures are reported and skipped, not moved (readers may not own the run); CheckpointError when
    none can be read."""
    ocp = orbax_io.ocp()
    errors = []
    for s in candidates:
        try:
            verify(ckpt_dir / str(s))
            out = orbax_io.read(manager, s, params=ocp.args.StandardRestore(abstract_params))
            check_finite(out["params"], s)
            return out["params"], s
        except Exception as e:  # noqa: BLE001
            why = _why(e)
            errors.append(f"step {s}: {why}")
            report(f"checkpoint: step {s} cannot be restored ({why}); trying an older one.")
    raise CheckpointError(f"no checkpoint in {ckpt_dir} can be restored: " + "; ".join(errors))
