"""Streaming corpora (data.streaming=true): blocks equal the in-memory packing, positions resume exactly,
processes read disjoint parts, and kill -9 + resume reproduces the uninterrupted run's losses bit for bit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxlm.data import packing, stream, text
from jaxlm.data.text import DataError
from tests.train.conftest import REPO, WORDS, cli_env, run_cli


def _docs(n: int = 60, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(3, 40))) for _ in range(n)]


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    docs = _docs(15)
    f = tmp_path / "corpus.jsonl"
    f.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok = text.char_tokenizer(docs)
    tok_file = tmp_path / "tok.json"
    tok.save(str(tok_file))
    return f, tok_file, docs


def _stream(path: Path, tok, rank: int = 0, world: int = 1, seq_len: int = 16) -> stream.StreamData:
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    def make(epoch):
        ds = load_dataset("json", data_files=str(path), split="train", streaming=True)
        return split_dataset_by_node(ds, rank=rank, world_size=world) if world > 1 else ds

    return stream.StreamData(make, tok, text.special_ids(tok)["eos"], seq_len, "text", world=world)


def test_stream_blocks_equal_in_memory_packing_and_wrap_to_the_next_epoch(corpus):
    path, tok_file, docs = corpus
    tok = text.load_tokenizer(tok_file)
    eos = text.special_ids(tok)["eos"]
    ref = packing.pack(text.encode(tok, docs), 16, eos_id=eos)
    n = len(ref["inputs"])
    s = _stream(path, tok)
    got = s.take(n)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert s.epoch == 0
    more = s.take(3)  # past the end: the stream starts over (epoch 1)
    assert s.epoch == 1 and more["inputs"].shape == (3, 16)


def test_stream_state_resumes_exactly_mid_document_and_across_epochs(corpus):
    path, tok_file, _ = corpus
    tok = text.load_tokenizer(tok_file)
    ref = _stream(path, tok)
    want = [ref.batch(i, 8) for i in range(40)]  # ~3 epochs of this small corpus
    assert ref.epoch >= 2
    for cut in (1, 7, 19, 33):
        a = _stream(path, tok)
        for i in range(cut):
            a.batch(i, 8)
        state = json.loads(json.dumps(a.state_dict()))  # as stored in the checkpoint's JSON meta
        b = _stream(path, tok)
        b.load_state_dict(state)
        for i in range(cut, 40):
            got = b.batch(i, 8)
            for k in got:
                np.testing.assert_array_equal(got[k], want[i][k], err_msg=f"cut {cut}, batch {i}, {k}")
    with pytest.raises(RuntimeError, match="cannot seek"):
        b.batch(3, 8)


def test_processes_read_disjoint_parts_of_the_stream(corpus):
    path, tok_file, docs = corpus
    tok = text.load_tokenizer(tok_file)
    seen = []
    for rank in (0, 1):
        ds = stream.open_dataset(_dc(path), str(path), "train", rank, 2)
        seen.append([ex["text"] for ex in ds])
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(docs)
    s = _stream(path, tok, rank=1, world=2)
    assert s.batch(0, 8)["inputs"].shape == (4, 16)  # this process's half of the batch


def _dc(path, **kw):
    from jaxlm.train.config import DataConfig

    return DataConfig(path=str(path), streaming=True, **kw)


def test_streaming_asks_for_a_tokenizer_first_and_refuses_other_tasks(corpus, tmp_path):
    from jaxlm.train import config as C

    path, tok_file, _ = corpus
    run = C.RunConfig(model="gpt2-tiny", data=_dc(path, tokenizer="bpe"))
    with pytest.raises(DataError, match=r"cannot first build data.tokenizer='bpe'.*data.tokenizer=runs/tok/tokenizer.json"):
        stream.prepare(run, tmp_path, None)
    run = C.RunConfig(model="bert-tiny", train=C.TrainConfig(task="mlm"), data=_dc(path, tokenizer=str(tok_file)))
    with pytest.raises(DataError, match="data.streaming=false"):
        stream.prepare(run, tmp_path, None)


def test_streaming_eval_holds_out_documents_by_hash(corpus, tmp_path):
    from jaxlm.train import config as C

    path, tok_file, docs = corpus
    run = C.RunConfig(model="gpt2-tiny", train=C.TrainConfig(batch_size=4, eval_batches=2),
                      data=_dc(path, tokenizer=str(tok_file), seq_len=16, eval_fraction=0.2))
    train_data, eval_data, *_ = stream.prepare(run, tmp_path, tmp_path / "tokenizer.json")
    assert (tmp_path / "tokenizer.json").is_file() and eval_data is not None and len(eval_data) == 8
    held = {d for d in docs if stream.held_out(d, 0.2)}
    assert 0 < len(held) < len(docs)
    assert all(train_data.keep(d) != (d in held) for d in docs)


STREAM_EXPERIMENT = '''
from jaxlm.models import gpt2
from jaxlm.train.config import DataConfig, RunConfig, TrainConfig


def config() -> RunConfig:
    return RunConfig(
        model=gpt2.Config(vocab_size=64, max_len=32, d_model=32, n_heads=2, n_layers=1, d_ff=64),
        train=TrainConfig(steps=24, batch_size=8, lr=3e-3, warmup_steps=3, log_every=1, eval_every=0,
                          eval_batches=2, checkpoint_every=8, progress=False, tensorboard=False, plot=False),
        data=DataConfig(path={path!r}, tokenizer={tok!r}, seq_len=16, eval_fraction=0.1, streaming=True),
    )
'''


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_streaming_kill9_resume_reproduces_the_uninterrupted_losses_bit_for_bit(corpus, tmp_path):
    path, tok_file, _ = corpus
    exp = tmp_path / "stream_exp.py"
    exp.write_text(STREAM_EXPERIMENT.format(path=str(path), tok=str(tok_file)))
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = run_cli("train", str(exp), "--run-dir", str(full))
    assert r.returncode == 0, r.stderr
    ref = _losses(full)
    assert sorted(ref) == list(range(1, 25))
    meta = json.loads((full / "checkpoints" / "16" / "meta" / "metadata").read_text())
    assert meta["stream"]["step"] == 16 and meta["stream"]["epoch"] >= 1  # the corpus wrapped around

    p = subprocess.Popen([sys.executable, "-m", "tests.train.run_with_fault", "13", "--", "train", str(exp),
                          "--run-dir", str(killed)], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        for line in p.stderr:
            if "hanging in step 13" in line:
                break
            assert time.time() < deadline, "the run never reached step 13"
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    r = run_cli("train", str(exp), "--run-dir", str(killed))
    assert r.returncode == 0, r.stderr
    assert "resuming from checkpoint step 8" in r.stdout
    got = _losses(killed)
    assert sorted(got) == list(range(1, 25))
    for s in range(9, 25):
        assert got[s] == ref[s], f"step {s}: resumed {got[s]!r} != uninterrupted {ref[s]!r}"
