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


def _wait_for_signal(loop: Loop, where: str) -> None:
    print(f"fault injection: blocking {where}", file=sys.stderr, flush=True)
    while loop.signal is None:
        time.sleep(0.05)


class BlockAt(Hook):
    """Blocks the loop at one point of step ``step``'s cycle until SIGTERM/SIGINT arrives, after printing
    ``fault injection: blocking POINT of step STEP`` to stderr. Points, in the order a step meets them:

    - ``"fetch"``: inside the metrics fetch of the step (its train row being logged: use a log step);
    - ``"hooks"``: after the step's update, before it is evaluated and saved (with ``train.log_every`` > 1
      and a step that is not a log step, before its metrics are fetched);
    - ``"save"``: right after the step's checkpoint save was started (a checkpoint step), while Orbax
      writes it in the background.

    Must run before the built-in hooks (``train(hooks=...)`` does)."""

    POINTS = ("fetch", "hooks", "save")

    def __init__(self, point: str, step: int):
        if point not in self.POINTS:
            raise ValueError(f"BlockAt: point {point!r} is not one of {self.POINTS}.")
        self.point, self.step = point, step

    def on_start(self, loop: Loop) -> None:
        if self.point != "save":
            return
        ckpt = loop.setup.ckpt
        save = ckpt.save

        def save_then_block(step: int, *a, **kw):
            started = save(step, *a, **kw)
            if step == self.step:
                _wait_for_signal(loop, f"save of step {step}")
            return started

        ckpt.save = save_then_block

    def on_log(self, loop: Loop, row: dict) -> None:
        if self.point == "fetch" and row.get("step") == self.step and "loss" in row:
            _wait_for_signal(loop, f"fetch of step {self.step}")

    def on_step(self, loop: Loop) -> None:
        if self.point == "hooks" and loop.step == self.step:
            _wait_for_signal(loop, f"hooks of step {self.step}")


def parse_fault(spec: str) -> Hook:
    """``STEP`` -> :class:`HangAtStep`; ``POINT:STEP`` -> :class:`BlockAt`."""
    point, _, step = spec.rpartition(":")
    return BlockAt(point, int(step)) if point else HangAtStep(int(step))
