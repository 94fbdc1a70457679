"""The errors a checkpoint can raise, and the test for a full disk behind whatever Orbax raised.

At the bottom of :mod:`jaxlm.train.checkpoint` so that saving, restoring and the CLI's error report
(:mod:`jaxlm.commands`, which looks up :class:`CheckpointError`) share one set of classes.
"""

from __future__ import annotations

import errno


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


def is_disk_full(e: BaseException | None) -> bool:
    """Whether ``e`` or an exception it was raised from is "no space left on device" (Orbax and
    TensorStore wrap the OSError, sometimes only in the message)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False
