"""Everything that can be wrong with a run directory, found before the first step.

:func:`check_run_dir` runs before the run directory is created or locked, and before data loading or
compilation: a fault that Orbax would otherwise meet at the first save (minutes in, in a background
thread, with a traceback) is one :class:`~jaxlm.config.ConfigError` naming the path and the fix, and
nothing is written. It checks, in order:

- the path: ``--run-dir`` is not a file, and its nearest existing ancestor is a directory (a file in the
  middle of the path, e.g. ``notes.txt/run``, is named);
- ``RUN/checkpoints`` is a directory when it exists (not a file where the checkpoints should go);
- writability: a probe file in the run directory (or, for a new one, the ancestor it will be created in)
  and in ``RUN/checkpoints``; ``chattr +i`` and read-only mounts stop root too;
- free space: the disk must hold one more checkpoint of this run (parameters + optimizer state, from the
  abstract state: nothing allocated; Orbax writes the new one before the keep policy deletes an old one);
  an unfinished save's space (a save the disk filled up during) counts as free: it is removed on open.

:func:`keep_history` then (under the run directory's lock) moves the logs of an earlier start that left no
checkpoint (``metrics.jsonl``, ``tb/``, ``loss.png``) into ``RUN/history/<UTC time>/`` instead of letting
the fresh run overwrite them, and says so in one line.
"""

from __future__ import annotations

import errno
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from jaxlm.config import ConfigError
from jaxlm.fileio import private_tmp
from jaxlm.train import config as C
from jaxlm.train.checkpoint import CHECKPOINTS, saved_steps

HISTORY = "history"
HISTORY_FILES = ("metrics.jsonl", "tb", "loss.png")  # an earlier start's logs, kept when a fresh run begins
MARGIN = 1.0  # the arrays' bytes; Orbax's metadata and the manifest are a few KiB on top


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(d: Path, what: str) -> None:
    """Write and remove a file in ``d``; ConfigError naming ``what`` if that fails (a full disk excepted:
    free space is checked on its own, with the sizes in the message)."""
    # one probe per process: the processes of a multi-process run share run_dir
    probe = private_tmp(d / ".write-test")
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        if e.errno == errno.ENOSPC:
            return
        raise ConfigError(f"{what} {d} is not writable ({e.strerror}); make it writable or choose another "
                          f"--run-dir.") from None


def check_path(run_dir: Path) -> Path:
    """The directory that must be writable for ``run_dir``: itself when it exists, else the ancestor it will
    be created in. ConfigError when the path cannot be a run directory."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file; give a directory.")
    base = nearest_existing(run_dir)
    if not base.is_dir():
        raise ConfigError(f"--run-dir {run_dir}: {base} is a file, not a directory, so the run directory "
                          f"cannot be created; fix the path or choose another --run-dir.")
    ck = run_dir / CHECKPOINTS
    if ck.exists() and not ck.is_dir():
        raise ConfigError(f"{ck} is a file where the run's checkpoint directory should be; move it away or "
                          f"choose another --run-dir.")
    return base


def checkpoint_bytes(run: C.RunConfig) -> int:
    """Bytes of one checkpoint of ``run``: the parameters it trains and their optimizer state (a LoRA run
    saves its adapters, not the frozen base), from abstract shapes; nothing is allocated."""
    from jaxlm.finetune import lora
    from jaxlm.train.optim import make_optimizer
    from jaxlm.train.state import create_state

    cfg, key = run.model, jax.random.key(0)
    opt = make_optimizer(run.train, cfg)
    if run.finetune.lora.enabled:
        lcfg = run.finetune.lora.config()
        adapters = jax.eval_shape(lambda k: lora.init(k, cfg, lcfg), key)
        shapes = jax.eval_shape(lambda p: create_state(key, cfg, opt, params=p), adapters)
    else:
        shapes = jax.eval_shape(lambda k: create_state(k, cfg, opt), key)
    saved = (shapes.params, shapes.opt_state)
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(saved))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def partial_bytes(run_dir: Path) -> int:
    """Bytes held by unfinished saves in ``RUN/checkpoints`` (Orbax's temporary directories, e.g. of a save the
    disk filled up during): the checkpointer removes them when it opens, so their space counts as free."""
    d = run_dir / CHECKPOINTS
    if not d.is_dir():
        return 0
    return sum(f.stat().st_size for p in d.iterdir() if p.is_dir() and "tmp" in p.name
               for f in p.rglob("*") if f.is_file())


def check_space(run_dir: Path, base: Path, need: int) -> None:
    """ConfigError when the disk of ``base`` has less free space than ``need`` bytes (one checkpoint), counting
    the space of unfinished saves the checkpointer will remove as free."""
    free = shutil.disk_usage(base).free + partial_bytes(run_dir)
    if free < need * MARGIN:
        raise ConfigError(f"not enough free disk space for a checkpoint in {run_dir}: one checkpoint of this "
                          f"run takes {_gib(need)}, the disk holding {base} has {_gib(free)} free; free "
                          f"space or choose another --run-dir.")


def check_run_dir(run_dir: str | Path, run: C.RunConfig) -> None:
    """Every fault of ``run_dir`` for training ``run`` (a resolved RunConfig), as one ConfigError, before
    anything is written: the path, ``checkpoints/``, writability and free space (module docstring)."""
    run_dir = Path(run_dir)
    base = check_path(run_dir)
    _probe(base, "run directory" if base == run_dir.absolute() else "parent directory")
    if (run_dir / CHECKPOINTS).is_dir():
        _probe(run_dir / CHECKPOINTS, "checkpoint directory")
    check_space(run_dir, base, checkpoint_bytes(run))


def keep_history(run_dir: Path, say: Callable[[str], None], now: float | None = None) -> Path | None:
    """Move an earlier start's logs (:data:`HISTORY_FILES`) to ``RUN/history/<UTC time>/`` when ``run_dir``
    holds them but no checkpoint (this run starts fresh and would overwrite them); returns where, or None
    when there was nothing to keep. A resumed run keeps its logs in place (it continues them)."""
    if saved_steps(run_dir):
        return None
    old = [run_dir / f for f in HISTORY_FILES if (run_dir / f).exists()]
    if not old or all(p.is_file() and p.stat().st_size == 0 for p in old):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    dst, n = run_dir / HISTORY / stamp, 0
    while dst.exists():
        n += 1
        dst = run_dir / HISTORY / f"{stamp}.{n}"
    dst.mkdir(parents=True)
    for p in old:
        p.rename(dst / p.name)
    say(f"{run_dir} holds the logs of an earlier start that left no checkpoint "
        f"({', '.join(p.name for p in old)}); kept in {dst}, this run starts fresh.")
    return dst


__all__ = ["HISTORY", "HISTORY_FILES", "check_path", "check_run_dir", "check_space", "checkpoint_bytes",
           "keep_history", "nearest_existing", "partial_bytes"]
