"""Run-directory files are replaced whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxlm.fileio import copy_atomic, write_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    f = tmp_path / "config.json"
    write_text_atomic(f, '{"old": 1}\n')

    def crash(p: Path) -> None:
        p.write_text('{"new": ')  # half written, then the process dies
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(f, crash)
    assert f.read_text() == '{"old": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_write_and_copy_replace_the_whole_file(tmp_path: Path):
    f = tmp_path / "a.txt"
    write_text_atomic(f, "x" * 1000)
    write_text_atomic(f, "short")
    assert f.read_text() == "short"
    copy_atomic(f, tmp_path / "b.txt")
    assert (tmp_path / "b.txt").read_text() == "short"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
