"""Checkpoint safety under faults: changed optimizer settings, flipped bits, a full disk, partial writes of
run files, a start that failed before its first step, a finished run asked for fewer steps.

One tiny run is trained once (10 steps, checkpoints at 5 and 10) and each test works on a copy of its run
directory with the same step configuration, so the whole module compiles the train step once."""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import subprocess
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxlm import params as P
from jaxlm.config import ConfigError
from jaxlm.models import family_of, gpt2
from jaxlm.train import config as C
from jaxlm.train.checkpoint import CORRUPT, MANIFEST, Checkpointer, DiskFull
from jaxlm.train.hooks import Hook, Loop
from jaxlm.train.loop import train
from jaxlm.train.setup import StepCache, setup
from tests.train.conftest import write_corpus


def tiny_run(corpus: Path, **train_kw) -> C.RunConfig:
    t = dict(steps=10, batch_size=8, lr=3e-3, warmup_steps=3, log_every=1, eval_every=0, checkpoint_every=5,
             best_metric="", progress=False, tensorboard=False, plot=False)
    return C.RunConfig(model=gpt2.Config(vocab_size=64, max_len=32, d_model=32, n_heads=2, n_layers=1, d_ff=64),
                       train=C.TrainConfig(**(t | train_kw)),
                       data=C.DataConfig(path=str(corpus), tokenizer="char", seq_len=32, eval_fraction=0.0))


def with_train(run: C.RunConfig, **kw) -> C.RunConfig:
    return run.replace(train=dataclasses.replace(run.train, **kw))


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in rows(run_dir) if "loss" in r}


def on_disk(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def cache() -> StepCache:
    return StepCache()


@pytest.fixture(scope="module")
def base(tmp_path_factory, cache) -> tuple[C.RunConfig, Path]:
    """An uninterrupted 10-step run: (its config, its run directory). Tests copy the directory."""
    root = tmp_path_factory.mktemp("base")
    run = tiny_run(write_corpus(root / "corpus.txt", n_words=3000))
    out = train(run, root / "run", quiet=True, cache=cache)
    assert out["step"] == 10 and on_disk(root / "run") == [5, 10]
    return run, root / "run"


@pytest.fixture
def copy(base, tmp_path) -> tuple[C.RunConfig, Path]:
    run, src = base
    shutil.copytree(src, tmp_path / "run")
    return run, tmp_path / "run"


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run directory: to show that a refused resume changed nothing."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change", [{"clip_norm": None}, {"grad_accum": 2}])
def test_changed_optimizer_is_refused_before_anything_is_moved(copy, cache, change):
    run, d = copy
    before = snapshot(d)
    with pytest.raises(ConfigError) as e:
        train(with_train(run, **change), d, quiet=True, cache=cache)
    msg = str(e.value)
    key = next(iter(change))
    assert "holds optimizer state of another structure" in msg and f"{key}: " in msg, msg
    assert "resume with the old train settings" in msg and "new --run-dir" in msg, msg
    assert "train.reset_optimizer=true" in msg and "nothing was moved" in msg, msg
    assert snapshot(d) == before  # no checkpoint moved, config.json and metrics.jsonl untouched
    assert not (d / CORRUPT).exists()
    # the original command still resumes from the newest checkpoint
    out = train(with_train(run, steps=10), d, quiet=True, cache=cache)
    assert out["resumed_from"] == 10


def test_reset_optimizer_restores_params_only(copy, cache, capsys):
    run, d = copy
    new = with_train(run, clip_norm=None, reset_optimizer=True)
    s, state = setup(new, d, cache=cache)  # setup only: what is restored, without compiling a new step
    s.ckpt.close()
    assert s.resumed_from == 10 and s.start == 10
    assert "restored the params of checkpoint step 10; the optimizer state" in capsys.readouterr().out
    saved = P.flatten(_read_params(run, d / "checkpoints", 10))
    assert all(np.array_equal(np.asarray(v), np.asarray(saved[k])) for k, v in P.flatten(state.params).items())
    fresh = s.compiled.optimizer.init(state.params)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
               zip(jax.tree_util.tree_leaves(state.opt_state), jax.tree_util.tree_leaves(fresh), strict=True))
    assert C.load(d / "config.json") == C.resolve(new)  # the next run resumes its own checkpoints
    assert on_disk(d) == [5, 10] and not (d / CORRUPT).exists()


# --------------------------------------------------------------------------------------------------------
def _read_params(run: C.RunConfig, ckpt_dir: Path, step: int) -> dict:
    """Step ``step``'s params read by Orbax alone (no checksum verification)."""
    abstract = P.abstract(family_of(run.model).spec(run.model))
    with ocp.CheckpointManager(ckpt_dir.absolute(), options=ocp.CheckpointManagerOptions(read_only=True)) as m:
        return m.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))["params"]


def flip_silently(run: C.RunConfig, run_dir: Path, step: int) -> str:
    """Flip one bit of a params data file of checkpoint ``step`` such that Orbax still restores it, to
    finite but different values (the fault checksums are for). Returns the changed parameter's path."""
    ref = P.flatten(_read_params(run, run_dir / "checkpoints", step))
    data = sorted((run_dir / "checkpoints" / str(step) / "params").rglob("d/*"), key=lambda p: -p.stat().st_size)
    f = data[0]
    orig = f.read_bytes()
    for i in range(len(orig) // 2, len(orig) - 8, 97):
        b = bytearray(orig)
        b[i] ^= 1
        f.write_bytes(bytes(b))
        try:
            got = P.flatten(_read_params(run, run_dir / "checkpoints", step))
        except Exception:  # noqa: BLE001 - this flip broke the compressed stream; try another byte
            continue
        changed = [k for k, v in got.items() if not np.array_equal(np.asarray(v), np.asarray(ref[k]))]
        if changed and all(np.isfinite(np.asarray(v)).all() for v in got.values()):
            return changed[0]
    f.write_bytes(orig)
    pytest.fail("no single-bit flip restored silently")


def test_flipped_bits_are_caught_quarantined_and_the_previous_checkpoint_used(copy, base, cache, capsys):
    run, d = copy
    changed = flip_silently(run, d, 10)
    earlier = d / CORRUPT / "10"  # a folder quarantined by an earlier run is kept, not replaced
    earlier.mkdir(parents=True)
    (earlier / "marker").write_text("earlier")

    # readers (eval, generate, init_from) skip it without moving anything
    ck = Checkpointer(d, read_only=True, report=print)
    try:
        _, step = ck.restore_params(P.abstract(family_of(run.model).spec(run.model)))
    finally:
        ck.manager.close()
    assert step == 5 and (d / "checkpoints" / "10").is_dir()
    assert "step 10 cannot be restored (IntegrityError: checksum mismatch" in capsys.readouterr().out

    out = train(run, d, cache=cache)
    log = capsys.readouterr().out
    assert "checkpoint: step 10 in" in log and "failed verification (IntegrityError: checksum mismatch" in log
    assert f"moved to {d / CORRUPT / '10.1'}" in log, log
    assert out["resumed_from"] == 5 and out["step"] == 10
    assert (earlier / "marker").read_text() == "earlier" and (d / CORRUPT / "10.1" / "params").is_dir()
    assert losses(d) == losses(base[1])  # steps 6..10 again, bit for bit
    assert changed  # the flipped bit did change a parameter that Orbax alone restores without complaint


# --------------------------------------------------------------------------------------------------------
class DiskFullAt(Hook):
    """Makes the save of ``step`` fail for lack of space: at once (``when="save"``, the synchronous part of
    Orbax's save) or when the async save is waited for (``when="async"``: the files are removed and the
    error surfaces at the next wait, as TensorStore's wrapped errors do)."""

    def __init__(self, step: int, when: str):
        self.step, self.when = step, when

    def on_start(self, loop: Loop) -> None:
        m = loop.setup.ckpt.manager
        real_save, real_wait = m.save, m.wait_until_finished
        full = OSError(errno.ENOSPC, "No space left on device")

        def save(step, *a, **kw):
            if step == self.step and self.when == "save":
                raise full
            return real_save(step, *a, **kw)

        def wait():
            real_wait()
            step_dir = loop.setup.ckpt.dir / str(self.step)
            if self.when == "async" and step_dir.exists():
                shutil.rmtree(step_dir)
                raise RuntimeError("tensorstore write failed") from full

        m.save, m.wait_until_finished = save, wait


@pytest.mark.parametrize("when", ["save", "async"])
def test_disk_full_while_saving_names_the_last_good_checkpoint(copy, base, cache, when):
    run, d = copy
    shutil.rmtree(d / "checkpoints" / "10")
    with pytest.raises(DiskFull) as e:
        train(run, d, quiet=True, cache=cache, hooks=[DiskFullAt(10, when)])
    assert str(e.value) == (f"no space left on device while saving step 10; the last good checkpoint is step 5 "
                            f"in {(d / 'checkpoints').absolute()}; free space and rerun the same command to "
                            f"resume from it.")
    assert on_disk(d) == [5]
    out = train(run, d, quiet=True, cache=cache)
    assert out["resumed_from"] == 5 and on_disk(d) == [5, 10]
    assert losses(d) == losses(base[1])


# --------------------------------------------------------------------------------------------------------
def test_partial_writes_of_run_files_still_resume_exactly(copy, base, cache, capsys):
    run, d = copy
    shutil.rmtree(d / "checkpoints" / "10")  # resume from 5, so the steps after it are computed again
    tok = (d / "tokenizer.json").read_bytes()
    with (d / "metrics.jsonl").open("a") as f:
        f.write('{"step": 11, "loss": 2.7')  # a row cut short
    (d / "tokenizer.json").write_bytes(tok[: len(tok) // 2])
    cfg = (d / "config.json").read_bytes()
    (d / "config.json").write_bytes(cfg[: len(cfg) // 2])
    (d / "tb").mkdir()
    (d / "tb" / "events.out.tfevents.1.host").write_bytes(b"\x18\x00\x00\x00\x00\x00\x00\x00\xa3\x7fK")

    out = train(with_train(run, tensorboard=True), d, cache=cache)
    log = capsys.readouterr().out
    assert out["resumed_from"] == 5 and out["step"] == 10
    assert "config.json cannot be read" in log and "tokenizer.json is damaged" in log, log
    assert losses(d) == losses(base[1])  # bit for bit, the cut row gone
    assert (d / "tokenizer.json").read_bytes() == tok  # built again from the data, identically
    assert C.load(d / "config.json").train.tensorboard
    assert len(list((d / "tb").glob("events.out.tfevents.*"))) == 2


# --------------------------------------------------------------------------------------------------------
def test_a_start_that_never_saved_can_be_restarted_with_other_settings(base, tmp_path, cache, capsys):
    run, _ = base
    d = tmp_path / "run"
    with pytest.raises(Exception, match="missing.txt"):
        train(run.replace(data=dataclasses.replace(run.data, path=str(tmp_path / "missing.txt"))), d, quiet=True,
              cache=cache)
    # a leftover config.json of a start with other settings (an older jaxlm wrote it before the data)
    d.mkdir(exist_ok=True)
    C.save(C.resolve(with_train(run, lr=1e-2).replace(data=dataclasses.replace(run.data, seq_len=16))),
           d / "config.json")
    (d / "tokenizer.json").write_text("{}")
    s, _ = setup(run, d, cache=cache)
    s.ckpt.close()
    assert "holds no checkpoint: the settings of its earlier start are replaced" in capsys.readouterr().out
    assert C.load(d / "config.json") == C.resolve(run)
    assert json.loads((d / "tokenizer.json").read_text()) != {}  # built from the new data


def test_finished_run_asked_for_fewer_steps_says_so(copy, cache):
    run, d = copy
    before = snapshot(d)
    with pytest.raises(ConfigError, match=r"already trained to step 10, past train.steps=5; nothing to do"):
        train(with_train(run, steps=5), d, quiet=True, cache=cache)
    assert snapshot(d) == before


def test_every_checkpoint_has_a_manifest(base):
    _, d = base
    for step in (5, 10):
        m = json.loads((d / "checkpoints" / str(step) / MANIFEST).read_text())["sha256"]
        assert any(k.startswith("params/") for k in m) and any(k.startswith("train/") for k in m)


@pytest.fixture
def small_disk(tmp_path):
    """A 560 KiB tmpfs: room for the run files and one checkpoint of the tiny run, not two. Skipped where
    mounting is not permitted (not root, no CAP_SYS_ADMIN)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=560k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_disk_ends_with_one_line_and_keeps_the_last_good_checkpoint(base, small_disk, cache):
    run, _ = base
    d = small_disk / "run"
    with pytest.raises(DiskFull, match=r"^no space left on device while saving step 10; the last good "
                                       r"checkpoint is step 5 in "):
        train(run, d, quiet=True, cache=cache)
    assert on_disk(d) == [5]
    s, _ = setup(run, d, quiet=True, cache=cache)  # it still resumes from the good one
    s.ckpt.close()
    assert s.resumed_from == 5
