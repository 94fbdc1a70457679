"""The Transformer (Vaswani et al. 2017) on Multi30k German -> English.

The paper's recipe at a CPU-friendly size: Adam (b2 = 0.98, eps = 1e-9) with the inverse-square-root
warm-up schedule (``schedule="noam"``), label smoothing 0.1, dropout 0.1, one byte-level BPE vocabulary
shared by source and target (and by the tied embeddings). Quick run: ``model.preset=transformer-tiny
train.steps=50 data.max_examples=2000``.

Data: the hub dataset ``bentrevett/multi30k`` (columns ``en``, ``de``; train 29,000 / validation 1,014 / test
1,000 pairs), German ``de`` -> English ``en``, trained on train and evaluated on validation. Offline,
``JAXLM_DATA=DIR`` reads the line-aligned ``DIR/multi30k/{train,val}.{de,en}`` (no test split there).
"""

from jaxlm.models import transformer
from jaxlm.train.config import DataConfig, RunConfig, TrainConfig


def config() -> RunConfig:
    return RunConfig(
        model=transformer.Config(vocab_size=8000, max_len=128, d_model=256, n_heads=4, n_layers=3, d_ff=1024),
        train=TrainConfig(task="seq2seq", steps=20000, batch_size=64, optimizer="adam", lr=1.0,
                          schedule="noam", warmup_steps=4000, b1=0.9, b2=0.98, eps=1e-9, clip_norm=None,
                          label_smoothing=0.1, eval_every=1000, eval_batches=16, checkpoint_every=1000),
        data=DataConfig(path="bentrevett/multi30k", source_column="de", target_column="en",
                        eval_split="validation", tokenizer="bpe", seq_len=64),
    )
