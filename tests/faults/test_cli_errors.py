"""What a careless user meets: every `jaxlm` sub-command ends a user error with one line on stderr and a
non-zero exit code, never a traceback; `jaxlm --debug` (or JAXLM_DEBUG=1) shows the traceback instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jaxlm import cli
from jaxlm.commands import train as train_cmd
from jaxlm.fileio import LOCK_FILE
from jaxlm.train.hooks import Hook, Loop
from tests.train.conftest import REPO


def error_line(capsys, prog: str) -> str:
    """The one line on stderr, which must be ``PROG: error: ...``; returns it."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def train_args(experiment: Path, run_dir: Path, *overrides: str) -> list[str]:
    return ["train", str(experiment), "train.steps=2", *overrides, "--run-dir", str(run_dir)]


# -- bad settings and inputs ---------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["model.preset=xyzzy"], "unknown preset 'xyzzy'; known: ["),
    (["train.stepz=3"], "unknown config key 'train.stepz' (did you mean 'steps'?)"),
    (["train.steps=abc"], "train.steps='abc': expected an integer."),
    (["train.seed=-1"], ""),  # which message is the validation's business; here: one line, exit 2
])
def test_bad_settings(experiment, tmp_path, capsys, overrides, message):
    assert cli.main(train_args(experiment, tmp_path / "run", *overrides)) == 2
    assert message in error_line(capsys, "jaxlm train")


def test_data_file_too_small_for_one_block(experiment, tmp_path, capsys):
    (tmp_path / "small.txt").write_text("ab\n")
    assert cli.main(train_args(experiment, tmp_path / "run", f"data.path={tmp_path / 'small.txt'}")) == 2
    line = error_line(capsys, "jaxlm train")
    assert "the data holds 3 tokens, fewer than one block of 33; lower data.seq_len or give more text." in line
    assert "--debug" not in line  # jaxlm's own message needs no traceback hint


def test_experiment_file_faults(tmp_path, capsys):
    (tmp_path / "bad.py").write_text("def config(:\n")
    assert cli.main(["train", str(tmp_path / "bad.py"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "invalid syntax (bad.py, line 1)" in error_line(capsys, "jaxlm train")
    assert cli.main(["train", str(tmp_path / "nope.py"), "--run-dir", str(tmp_path / "run")]) == 2
    assert f"experiment file {tmp_path / 'nope.py'} does not exist" in error_line(capsys, "jaxlm train")


def test_run_dir_is_a_file(experiment, tmp_path, capsys):
    assert cli.main(train_args(experiment, experiment)) == 2
    assert error_line(capsys, "jaxlm train") == f"jaxlm train: error: --run-dir {experiment} is a file; give a directory."


def can_make_read_only(d: Path) -> bool:
    """``chattr +i d`` (which stops even root from writing there), where the file system supports it."""
    if shutil.which("chattr") is None:
        return False
    if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
        return False
    try:
        (d / "probe").write_text("x")
    except OSError:
        return True
    (d / "probe").unlink()
    subprocess.run(["chattr", "-i", str(d)], check=True)
    return False


def test_read_only_checkpoints_dir_fails_at_once(experiment, tmp_path, capsys):
    """Before, Orbax met it at the first save and retried for 5 minutes, then printed 410 lines."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    if not can_make_read_only(run_dir / "checkpoints"):
        pytest.skip("cannot make a directory read-only here (no chattr +i)")
    try:
        assert cli.main(train_args(experiment, run_dir)) == 2
        line = error_line(capsys, "jaxlm train")
    finally:
        subprocess.run(["chattr", "-i", str(run_dir / "checkpoints")], check=True)
    assert line == (f"jaxlm train: error: checkpoint directory {run_dir / 'checkpoints'} is not writable "
                    f"(Operation not permitted); make it writable or choose another --run-dir.")
    assert not (run_dir / LOCK_FILE).exists()


def test_read_only_checkpoints_dir_simulated(experiment, tmp_path, capsys, monkeypatch):
    """The same where chattr is unavailable: writes under checkpoints/ fail as on a read-only mount."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    write_text = Path.write_text

    def read_only(self, *a, **kw):
        if self.parent.name == "checkpoints":
            raise OSError(30, "Read-only file system", str(self))
        return write_text(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", read_only)
    assert cli.main(train_args(experiment, run_dir)) == 2
    assert "checkpoints is not writable (Read-only file system)" in error_line(capsys, "jaxlm train")


# -- failures while training ----------------------------------------------------------------------------
def test_nan_loss_is_one_line_exit_1(experiment, tmp_path, capsys):
    # a finite but absurd rate (train.lr=nan is refused up front): sgd steps overflow float32 at once
    args = ("train.optimizer=sgd", "train.lr=1e30", "train.warmup_steps=0", "train.clip_norm=0")
    assert cli.main(train_args(experiment, tmp_path / "run", *args)) == 1
    line = error_line(capsys, "jaxlm train")
    assert "training stopped" in line and "at step 2" in line and "The last good checkpoint is none" in line


class FullDisk(Hook):
    """Every checkpoint save fails as on a full disk."""

    def on_start(self, loop: Loop) -> None:
        def full(*a, **kw):
            raise OSError(28, "No space left on device")

        loop.setup.ckpt.save = full


def test_full_disk_is_one_line_exit_1(experiment, tmp_path, capsys):
    rc = train_cmd.main(train_args(experiment, tmp_path / "run")[1:], hooks=[FullDisk()])
    assert rc == 1
    assert "No space left on device" in error_line(capsys, "jaxlm train")
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_ctrl_c_during_setup(experiment, tmp_path, capsys, monkeypatch):
    from jaxlm.data import pipeline

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "prepare", interrupted)
    assert cli.main(train_args(experiment, tmp_path / "run")) == 130
    assert capsys.readouterr().err == "jaxlm train: interrupted\n"
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # the lock taken before is released


# -- eval / generate on damaged or missing run directories ---------------------------------------------
@pytest.mark.parametrize("content", ['{"model": {"family": "gp', ""], ids=["truncated", "empty"])
@pytest.mark.parametrize("command", ["eval", "generate"])
def test_damaged_config_json(tmp_path, capsys, content, command):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text(content)
    argv = [command, str(run_dir)] + (["--prompt", "the"] if command == "generate" else [])
    assert cli.main(argv) == 2
    assert f"{run_dir / 'config.json'} is not valid JSON: " in error_line(capsys, f"jaxlm {command}")


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_missing_run_dir(tmp_path, capsys, command):
    argv = [command, str(tmp_path / "missing")] + (["--prompt", "the"] if command == "generate" else [])
    assert cli.main(argv) == 2
    assert f"{tmp_path / 'missing'} does not exist" in error_line(capsys, f"jaxlm {command}")


def test_eval_of_a_run_that_never_saved(experiment, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(train_args(experiment, run_dir, f"data.path={tmp_path / 'nope.txt'}")) == 2  # failed start
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir)]) == 2
    # the failed start wrote nothing (no config.json), so there is no run to evaluate
    assert "holds neither a jaxlm run" in error_line(capsys, "jaxlm eval")


def test_generate_flag_conflicts_and_bad_prompt_ids(tmp_path, capsys):
    assert cli.main(["generate", str(tmp_path), "--prompt", "x", "--greedy", "--top-k", "5"]) == 2
    assert "--greedy takes the most likely token, so --top-k would be ignored" in error_line(capsys, "jaxlm generate")
    assert cli.main(["generate", str(tmp_path), "--prompt", "x", "--beam", "2", "--greedy"]) == 2
    assert "--beam runs beam search" in error_line(capsys, "jaxlm generate")


# -- the command line itself ----------------------------------------------------------------------------
def test_usage_errors_are_one_line(capsys):
    assert cli.main(["trian"]) == 2
    assert capsys.readouterr().err == "jaxlm: error: unknown command 'trian' (did you mean 'train'?); see jaxlm --help\n"
    for argv, prog in ((["train"], "jaxlm train"), (["models", "--bogus"], "jaxlm models"),
                       (["eval"], "jaxlm eval"), (["generate", "x"], "jaxlm generate"), (["convert"], "jaxlm convert")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        assert error_line(capsys, prog).endswith(f"; see {prog} --help")


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cli.main(["--debug", "eval", str(tmp_path / "missing")])
    monkeypatch.setenv("JAXLM_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cli.main(["eval", str(tmp_path / "missing")])


def test_a_real_process_prints_one_line(tmp_path):
    """Nothing else reaches stderr in a real `jaxlm` process (no library warnings around the line)."""
    r = subprocess.run([sys.executable, "-m", "jaxlm.cli", "eval", str(tmp_path / "missing")], cwd=REPO,
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)))
    assert r.returncode == 2
    assert r.stderr == (f"jaxlm eval: error: run directory {tmp_path / 'missing'} does not exist; give the "
                        f"--run-dir of a jaxlm train run.\n")
