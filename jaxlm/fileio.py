"""Writing run-directory files so that readers never see half a file.

Why: the processes of a multi-process run share one run directory and read ``config.json`` /
``tokenizer.json`` while another process may be writing them, and a kill mid-write must not leave a
truncated file that makes the run unreadable. Each write goes to a temporary file private to this process
and is renamed into place (``os.replace`` is atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path


def private_tmp(path: Path) -> Path:
    """A temporary name next to ``path`` that no other process (on any host) uses."""
    return path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` to write a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    tmp = private_tmp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see the module docstring)."""
    write_atomic(path, lambda p: p.write_text(text))


def copy_atomic(src: str | Path, dst: str | Path) -> None:
    """Copy the file ``src`` to ``dst`` atomically."""
    write_atomic(dst, lambda p: shutil.copyfile(src, p))
