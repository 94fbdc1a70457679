"""Sub-commands of the ``jaxlm`` CLI; each module exposes ``main(argv) -> int``.

Every ``main`` runs its work through :func:`run`, which ends a user error with ONE line on stderr
(``jaxlm COMMAND: error: ...``) and a non-zero exit code instead of a traceback; ``jaxlm --debug COMMAND``
or ``JAXLM_DEBUG=1`` shows the traceback instead. :class:`Parser` does the same for argument errors.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

DEBUG_ENV = "JAXLM_DEBUG"
_JAXLM_DIR = Path(__file__).resolve().parents[1]

# jaxlm's own user-error types, by defining module; ConfigError, DataError and UnsupportedModelError are
# ValueErrors. Looked up in sys.modules rather than imported: an exception of a type whose module was never
# imported cannot have been raised, and importing the training stack here would slow down `jaxlm models`.
_JAXLM_ERRORS = (("jaxlm.train.checkpoint", "CheckpointError"), ("jaxlm.train.hooks", "TrainingError"),
                 ("jaxlm.fileio", "RunDirLocked"))

# OSErrors that mean "wrong path or permissions given" (bad input) rather than a failure while working
_INPUT_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS}


def debug() -> bool:
    """Whether tracebacks are wanted (``jaxlm --debug`` or ``JAXLM_DEBUG=1``)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _user_errors() -> tuple[type[BaseException], ...]:
    own = tuple(getattr(sys.modules[m], name) for m, name in _JAXLM_ERRORS if m in sys.modules)
    return (*own, ValueError, OSError)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if isinstance(e, KeyError) and e.args:  # str(KeyError) is the repr of the key alone
        return f"missing key {e.args[0]!r}"
    return lines[0] if lines else type(e).__name__


def _raised_by_jaxlm(e: BaseException) -> bool:
    """Whether jaxlm's own code raised ``e`` (a message written for the user) rather than a library it
    called (whose message may need the traceback to be understood)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_JAXLM_DIR)


def exit_code(e: BaseException) -> int:
    """2 for bad input (settings, data, paths, a busy run directory), 1 for a failure while working (a NaN
    loss, a full disk, an I/O error)."""
    if type(e).__name__ == "TrainingError":
        return 1
    if isinstance(e, OSError) and e.errno is not None and e.errno not in _INPUT_ERRNOS:
        return 1
    return 2


def run(prog: str, fn: Callable[[], int | None], *, also: tuple[type[BaseException], ...] = (),
        code: int | None = None) -> int:
    """``fn()``'s exit status; a user error (jaxlm's error types, ValueError, OSError, and ``also``) is
    printed as one line ``PROG: error: MESSAGE`` on stderr and returns ``code`` (default
    :func:`exit_code`); Ctrl-C outside training returns 130. With :func:`debug` the error propagates."""
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        if debug():
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (*_user_errors(), *also) as e:
        if debug():
            raise
        hint = "" if _raised_by_jaxlm(e) else f" (jaxlm --debug {prog.removeprefix('jaxlm ')} ... shows where)"
        print(f"{prog}: error: {_first_line(e)}{hint}", file=sys.stderr)
        return exit_code(e) if code is None else code


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``PROG: error: ...; see PROG --help``), exit 2,
    and whose :meth:`parse_args` lets flags and positionals (paths, ``key=value`` overrides) come in any
    order: ``jaxlm eval RUN --step best data.eval_path=x`` parses like ``jaxlm eval RUN data.eval_path=x
    --step best``."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """The namespace of ``args`` with positionals and flags intermixed
        (:meth:`argparse.ArgumentParser.parse_intermixed_args`). Plain ``parse_args`` stops filling a
        ``nargs="*"`` positional at the first flag, so overrides after a flag were "unrecognized"."""
        return self.parse_intermixed_args(args, namespace)

    def add_argument(self, *args, **kwargs):  # type: ignore[override]
        """As :meth:`argparse.ArgumentParser.add_argument`; a ``nargs="*"`` positional defaults to ``[]``,
        so a usage error does not list it among the missing required arguments."""
        if args and not args[0].startswith(self.prefix_chars) and kwargs.get("nargs") == "*":
            kwargs.setdefault("default", [])
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")
