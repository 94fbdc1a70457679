"""Fault injection for the resume tests: a training hook that makes a run hang inside a chosen step, so a
test can kill it there (SIGKILL: no handler runs) or stop it (SIGTERM/SIGINT: the run saves and exits)."""

from __future__ import annotations

import sys
import time

from jaxlm.train.hooks import Hook, Loop


class HangAtStep(Hook):
    """Hangs once step ``step - 1`` is done, i.e. inside step ``step``, until SIGTERM/SIGINT arrives (then
    the checkpointing hook that runs after it saves step ``step - 1`` and stops the run). Before hanging it
    waits for earlier saves to finish, as they would have in a long real step, and prints
    ``hanging in step STEP`` to stderr. Must run before the built-in hooks (``train(hooks=...)`` does)."""

    def __init__(self, step: int):
        if step < 2:
            raise ValueError(f"HangAtStep({step}): the hang follows a finished step, so step must be >= 2.")
        self.step = step

    def on_step(self, loop: Loop) -> None:
        if loop.step + 1 != self.step:
            return
        loop.setup.ckpt.wait()
        print(f"fault injection: hanging in step {self.step}", file=sys.stderr, flush=True)
        while loop.signal is None:
            time.sleep(0.1)
