"""BERT on SST-2 sentiment: masked-LM pre-training on the training sentences, then fine-tuning a classifier.

Two stages, two run directories; the second starts from the first's parameters (``train.init_from``) and
reuses its tokenizer::

    jaxlm train experiments/bert_sentiment.py --run-dir runs/bert_mlm
    jaxlm train experiments/bert_sentiment.py:finetune train.init_from=runs/bert_mlm --run-dir runs/bert_sst2

Quick run: add ``model.preset=bert-tiny train.steps=30 data.max_examples=2000`` to both.

Data: the hub dataset ``nyu-mll/glue`` config ``sst2`` (``sentence``, ``label`` 0 negative / 1 positive,
``idx``; train 67,349 / validation 872 / test 1,821 unlabelled), trained on train and scored on validation.
Offline, ``JAXLM_DATA=DIR`` reads ``DIR/sst2/{train,dev}.tsv`` (dev = validation) with the same columns.
"""

from jaxlm.models import bert
from jaxlm.train.config import DataConfig, RunConfig, TrainConfig

SST2 = {"path": "nyu-mll/glue", "hub_config": "sst2", "text_column": "sentence"}  # GLUE SST-2 on the hub
MODEL = bert.Config(vocab_size=8000, max_len=128, d_model=256, n_heads=4, n_layers=4, d_ff=1024)


def config() -> RunConfig:
    """Stage 1: masked-LM pre-training (15 % of tokens, 80/10/10) on the packed training sentences."""
    return RunConfig(
        model=MODEL,
        train=TrainConfig(task="mlm", steps=3000, batch_size=64, lr=5e-4, warmup_steps=200, weight_decay=0.01,
                          eval_every=500, checkpoint_every=500),
        data=DataConfig(**SST2, tokenizer="bpe", seq_len=128),
    )


def finetune() -> RunConfig:
    """Stage 2: sentence classification from the stage-1 parameters (set ``train.init_from``)."""
    return RunConfig(
        model=MODEL,
        train=TrainConfig(task="classification", steps=2000, batch_size=32, lr=1e-4, warmup_steps=100,
                          eval_every=250, checkpoint_every=500, best_metric="eval_accuracy", best_mode="max",
                          init_from="runs/bert_mlm"),
        data=DataConfig(**SST2, eval_split="validation", label_column="label", tokenizer="bpe", seq_len=64),
    )
