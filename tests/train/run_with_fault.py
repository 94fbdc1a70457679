"""``python -m tests.train.run_with_fault FAULT -- train EXPERIMENT.py [...]``: the ``jaxlm train`` command
with a fault-injection hook installed (run from the repository root). FAULT is ``STEP``
(:class:`tests.train.fault_hooks.HangAtStep`) or ``POINT:STEP`` (:class:`tests.train.fault_hooks.BlockAt`,
POINT one of fetch, hooks, save)."""

from __future__ import annotations

import sys

from jaxlm.commands import train as train_cmd
from tests.train.fault_hooks import parse_fault


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or argv[2] != "train":
        print("usage: python -m tests.train.run_with_fault FAULT -- train EXPERIMENT.py [...]", file=sys.stderr)
        return 2
    return train_cmd.main(argv[3:], hooks=[parse_fault(argv[0])])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
