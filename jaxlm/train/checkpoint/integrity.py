"""Whether a checkpoint is intact: its checksum manifest, the check against it, finite parameters, and
moving a damaged checkpoint aside.

Apart from Orbax on purpose: these read and move plain files, so a damaged checkpoint is caught (flipped
bits that still decode to finite numbers) before Orbax reads it, and kept for inspection, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlm.fileio import write_text_atomic
from jaxlm.train.checkpoint.errors import IntegrityError

CORRUPT = "checkpoints-corrupt"
MANIFEST = "jaxlm-sha256.json"


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


def check_finite(params: Any, step: int) -> None:
    """Raise ValueError naming the first floating-point leaf of ``params`` that holds a NaN or inf."""
    bad = [k for k, v in jax.tree_util.tree_leaves_with_path(params)
           if np.issubdtype(np.dtype(v.dtype), np.floating) and not bool(np.isfinite(np.asarray(v)).all())]
    if bad:
        raise ValueError(f"checkpoint step {step} holds non-finite parameters at {jax.tree_util.keystr(bad[0])}")


def quarantine(run_dir: Path, step_dir: Path, step: int, err: Exception,
               report: Callable[[str], Any]) -> Path:
    """Move ``step_dir`` (checkpoint ``step``, which failed with ``err``) to ``run_dir/CORRUPT/<step>``
    (``<step>.1``, ``.2``, ... when that name is taken) and report it; returns where it went."""
    parent = run_dir / CORRUPT
    dst, n = parent / str(step), 0
    while dst.exists():  # an earlier quarantined checkpoint of the same step is kept, never replaced
        n += 1
        dst = parent / f"{step}.{n}"
    report(f"checkpoint: step {step} in {step_dir} failed verification ({type(err).__name__}: "
           f"{str(err).splitlines()[0][:200]}); moved to {dst}, trying an older one.")
    parent.mkdir(parents=True, exist_ok=True)
    if step_dir.exists():
        shutil.move(str(step_dir), str(dst))
    return dst
