"""T5 (Raffel et al. 2020): span-corruption pre-training on the Python standard library's source (the demo's
corpus), then fine-tuning on Multi30k German -> English, next to the 2017 Transformer trained on the same
translation data for the same steps at a similar size. Sized for a few minutes of CPU per stage.

    jaxlm train experiments/t5_span_corruption.py --run-dir runs/t5sc/pretrain          # span corruption
    jaxlm train experiments/t5_span_corruption.py:finetune train.init_from=runs/t5sc/pretrain \
        --run-dir runs/t5sc/finetune                                                     # de -> en
    jaxlm train experiments/t5_span_corruption.py:baseline --run-dir runs/t5sc/transformer
    python -c "from jaxlm.evaluation import bleu_of_run as b; print(b('runs/t5sc/finetune', limit=200), b('runs/t5sc/transformer', limit=200))"

All three stages share one byte-level BPE (4,000 tokens) trained on the Multi30k training text (German and
English), written once to ``runs/t5sc/tokenizer.json``, so the pre-trained embeddings are the ones the
translation stage reads and both translation models see identical token ids. The T5 keeps the top 96 ids of
its 4,096-id vocabulary for span-corruption sentinels. T5 v1.0 layout (ReLU FFN, tied head, relative position
bias), no dropout while pre-training (as T5 v1.1), dropout 0.1 while fine-tuning; the Transformer is the
paper's (post-norm, sinusoidal positions, tied embeddings). Same optimiser, schedule, batch and steps for
both translation runs.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from jaxlm.models import t5, transformer
from jaxlm.train.config import DataConfig, RunConfig, TrainConfig

DATA = "bentrevett/multi30k"  # JAXLM_DATA=DIR reads a local mirror instead (jaxlm/data/hub.py)
TOKENIZER = "runs/t5sc/tokenizer.json"
D, HEADS, LAYERS, FF = 128, 4, 2, 512


def _tokenizer() -> str:
    """The shared BPE, trained on the Multi30k training text on first use."""
    path = Path(TOKENIZER)
    if not path.is_file():
        from jaxlm.data import text

        train = text.load(DATA, split="train")
        lines = list(train["de"]) + list(train["en"])
        path.parent.mkdir(parents=True, exist_ok=True)
        text.bpe_tokenizer(lines, 4000).save(str(path))
    return str(path)


def _t5(dropout: float) -> t5.Config:
    return t5.Config(vocab_size=4096, max_len=64, d_model=D, n_heads=HEADS, d_head=D // HEADS, n_layers=LAYERS,
                     d_ff=FF, dropout=dropout, attn_dropout=dropout, ffn_dropout=dropout)


def _translate_train() -> TrainConfig:
    return TrainConfig(task="seq2seq", steps=150, batch_size=32, lr=2e-3, schedule="cosine", warmup_steps=15,
                       b2=0.98, weight_decay=0.01, label_smoothing=0.1, eval_every=150, eval_batches=4,
                       checkpoint_every=150, log_every=25)


def _translate_data() -> DataConfig:
    return DataConfig(path=DATA, source_column="de", target_column="en", eval_split="validation",
                      tokenizer=_tokenizer(), seq_len=32, target_len=32)


def config() -> RunConfig:
    """Stage 1: span corruption (15 % noise, mean span 3) on 64-token blocks of the standard library."""
    return RunConfig(
        model=_t5(0.0),
        train=TrainConfig(task="span_corruption", steps=100, batch_size=32, lr=2e-3, schedule="cosine",
                          warmup_steps=10, b2=0.99, weight_decay=0.01, eval_every=100, eval_batches=4,
                          checkpoint_every=100, log_every=25),
        data=DataConfig(path=sysconfig.get_paths()["stdlib"], glob="*.py", tokenizer=_tokenizer(), seq_len=64,
                        eval_fraction=0.05),
    )


def finetune() -> RunConfig:
    """Stage 2: the pre-trained T5 on Multi30k de -> en (pass ``train.init_from=`` the stage-1 run)."""
    return RunConfig(model=_t5(0.1), train=_translate_train(), data=_translate_data())


def baseline() -> RunConfig:
    """The 2017 Transformer at a similar size, same data, tokenizer, optimiser and steps."""
    return RunConfig(
        model=transformer.Config(vocab_size=4096, max_len=64, d_model=D, n_heads=HEADS, n_layers=LAYERS, d_ff=FF,
                                 dropout=0.1),
        train=_translate_train(), data=_translate_data())
