"""The ``jaxlm`` command line: ``jaxlm models | train | eval | generate | convert | plan``.

Each sub-command lives in its own module under :mod:`jaxlm.commands` and is imported only when used, so
``jaxlm models`` starts fast and a missing optional dependency affects only its own command. A user error
ends any command with one line on stderr and a non-zero exit code (:func:`jaxlm.commands.run`);
``jaxlm --debug COMMAND ...`` or ``JAXLM_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

from jaxlm.config import closest

DEBUG_ENV = "JAXLM_DEBUG"  # tracebacks instead of one-line errors; read by jaxlm.commands.debug

COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("jaxlm.commands.models", "list every preset with its exact parameter count"),
    "train": ("jaxlm.commands.train", "train an experiment: jaxlm train EXPERIMENT.py [key=value ...] --run-dir DIR"),
    "eval": ("jaxlm.commands.eval", "evaluate a run directory (or a Hugging Face directory)"),
    "generate": ("jaxlm.commands.generate", "generate text from a run directory or Hugging Face directory"),
    "convert": ("jaxlm.commands.convert", "convert Hugging Face / GGUF checkpoints to and from jaxlm"),
    "plan": ("jaxlm.commands.plan", "will it fit on a TPU slice, how fast: jaxlm plan PRESET --topology v5e-16"),
    "harness": ("jaxlm.commands.harness", "run lm-evaluation-harness tasks with jaxlm as the model backend"),
}


def _usage() -> str:
    lines = ["usage: jaxlm [--debug] COMMAND [args ...] | jaxlm --version", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines.append("\n`jaxlm COMMAND --help` describes a command's arguments. Errors are one line; --debug (or "
                 f"{DEBUG_ENV}=1) shows the traceback instead.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    while argv and argv[0] == "--debug":
        os.environ[DEBUG_ENV] = "1"  # read by jaxlm.commands.run, also in the command's subprocesses
        argv = argv[1:]
    if argv and argv[0] in ("--version", "-V"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"jaxlm {version('jaxlm')}")
        except PackageNotFoundError:  # run from a checkout that is not installed
            print("jaxlm (not installed)")
        return 0
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"jaxlm: error: unknown command {cmd!r}{closest(cmd, COMMANDS)}; see jaxlm --help", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[cmd][0])
    except ImportError as e:  # a missing optional dependency
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"jaxlm {cmd}: error: {e}", file=sys.stderr)
        return 1
    return int(module.main(rest) or 0)  # each command ends its user errors itself (jaxlm.commands.run)


if __name__ == "__main__":
    sys.exit(main())
