"""Writing run-directory files so that readers never see half a file.

Why: the processes of a multi-process run share one run directory and read ``config.json`` /
``tokenizer.json`` while another process may be writing them, and a kill mid-write must not leave a
truncated file that makes the run unreadable. Each write goes to a temporary file private to this process
and is renamed into place (``os.replace`` is atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import time
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


LOCK_FILE = ".lock"


class RunDirLocked(RuntimeError):
    """Another process holds the run directory's lock; the message names it (PID, host, since when)."""


class RunLock:
    """One writer per run directory: an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock``, which holds the
    holder's PID, host and start time for the message a second writer gets.

    Why flock: the kernel drops the lock when the holder's file descriptor closes, i.e. on any exit
    including SIGKILL, so a lock file left by a killed process is stale exactly when its flock is free and
    needs no PID-liveness guessing (which fails across hosts). Taking the lock never waits: a second
    writer fails at once with :class:`RunDirLocked`. :meth:`release` (idempotent) removes the file.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunDirLocked(f"{self.path.parent} is in use by another jaxlm process "
                                   f"({self._holder()}); wait for it to end or stop it, or choose another "
                                   f"--run-dir.") from None
            except BaseException:
                os.close(fd)
                raise
            # the holder we waited on may have removed the file between our open and flock: the lock we
            # got is then on an orphaned inode that a third process would not see, so start again
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd: int | None = fd
        info = f"PID {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.write(fd, (info + "\n").encode())

    def _holder(self) -> str:
        # the holder writes its line right after taking the lock: give it a moment before saying "unknown"
        for _ in range(20):
            try:
                text = self.path.read_text().strip()
            except OSError:
                text = ""
            if text:
                return text
            time.sleep(0.05)
        return "PID and host unknown"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and drop the lock (unlink first, so no one locks the old file after)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
