"""T5 through the command line: ``jaxlm train`` pre-trains with span corruption, fine-tunes (``seq2seq``,
``train.init_from``) on parallel text, ``jaxlm generate --beam`` translates, ``jaxlm convert --to-hf``
writes a checkpoint that transformers loads with the same logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jaxlm import cli, pretrained
from tests.train.conftest import write_corpus

EXPERIMENT = '''
from jaxlm.models import t5
from jaxlm.train.config import DataConfig, RunConfig, TrainConfig


def _train(task, steps):
    return TrainConfig(task=task, steps=steps, batch_size=4, lr=3e-3, warmup_steps=1, log_every=1, eval_every=0,
                       checkpoint_every=steps, progress=False, tensorboard=False, plot=False)


def config() -> RunConfig:  # pre-training: span corruption on plain text
    return RunConfig(model=t5.Config(vocab_size=64, max_len=32, d_model=32, n_heads=2, d_head=16, n_layers=1,
                                     d_ff=64, rel_buckets=8, rel_max_distance=16, dropout=0.0, attn_dropout=0.0,
                                     ffn_dropout=0.0),
                     train=_train("span_corruption", 3),
                     data=DataConfig(path={corpus!r}, tokenizer="char", seq_len=24, eval_fraction=0.0))


def finetune() -> RunConfig:  # the same model on (source, target) lines
    base = config()
    return RunConfig(model=base.model, train=_train("seq2seq", 2),
                     data=DataConfig(path={src!r}, target_path={tgt!r}, tokenizer="char", seq_len=16,
                                     target_len=16, eval_fraction=0.0))
'''


@pytest.mark.slow
def test_t5_train_span_corruption_finetune_generate_convert(tmp_path: Path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=1500)
    lines = corpus.read_text().splitlines()[:40]
    (tmp_path / "src.txt").write_text("\n".join(s[:14] for s in lines) + "\n")
    (tmp_path / "tgt.txt").write_text("\n".join(s[:14][::-1] for s in lines) + "\n")
    exp = tmp_path / "t5exp.py"
    exp.write_text(EXPERIMENT.format(corpus=str(corpus), src=str(tmp_path / "src.txt"), tgt=str(tmp_path / "tgt.txt")))

    pre, fine = tmp_path / "pre", tmp_path / "fine"
    assert cli.main(["train", str(exp), "--run-dir", str(pre)]) == 0
    assert cli.main(["train", f"{exp}:finetune", f"train.init_from={pre}", "--run-dir", str(fine)]) == 0
    out = capsys.readouterr().out
    assert "t5" in out and "initialised from" in out

    # beam search from the run directory (a 2-step model may well end at </s> at once: only the run is checked)
    assert cli.main(["generate", str(fine), "--prompt", lines[0][:14], "--beam", "2", "--max-new-tokens", "6"]) == 0
    assert not capsys.readouterr().err

    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    assert cli.main(["convert", "--to-hf", str(fine), "--out", str(tmp_path / "hf")]) == 0
    loaded = pretrained.load(fine)
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    from jaxlm.models import t5

    src = np.array([[5, 6, 7, 8, 2]], np.int32)
    tgt = np.array([[1, 9, 10]], np.int32)
    ours = np.asarray(t5.apply(loaded.params, src, tgt, loaded.config))
    with torch.no_grad():
        ref = back(input_ids=torch.tensor(src, dtype=torch.long),
                   decoder_input_ids=torch.tensor(tgt, dtype=torch.long)).logits.numpy()
    assert np.abs(ours - ref).max() < 1e-4
