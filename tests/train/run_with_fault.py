"""``python -m tests.train.run_with_fault STEP -- train EXPERIMENT.py [...]``: the ``jaxlm train`` command
with :class:`tests.train.fault_hooks.HangAtStep` installed (run from the repository root)."""

from __future__ import annotations

import sys

from jaxlm.commands import train as train_cmd
from tests.train.fault_hooks import HangAtStep


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or argv[2] != "train":
        print("usage: python -m tests.train.run_with_fault STEP -- train EXPERIMENT.py [...]",
              file=sys.stderr)
        return 2
    return train_cmd.main(argv[3:], hooks=[HangAtStep(int(argv[0]))])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
