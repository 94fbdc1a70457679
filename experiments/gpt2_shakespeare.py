"""GPT-2 on Tiny Shakespeare, character level (the nanoGPT / char-rnn setting).

Default: a 6-layer, 384-wide, 6-head GPT-2 with context 256 (nanoGPT's "shakespeare_char" model, which
reaches a validation loss of 1.4697 nats). Quick run: ``model.preset=gpt2-tiny data.seq_len=64 train.steps=50``.

Data: the hub dataset ``karpathy/tiny_shakespeare`` (one ``text`` row per split: train 1,003,854 characters,
validation and test 55,770 each), trained on train and evaluated on validation. Offline, ``JAXLM_DATA=DIR``
reads char-rnn's ``input.txt`` from ``DIR/tinyshakespeare/`` and cuts the same three splits from it.
"""

from jaxlm.models import gpt2
from jaxlm.train.config import DataConfig, RunConfig, TrainConfig


def config() -> RunConfig:
    return RunConfig(
        model=gpt2.Config(vocab_size=128, max_len=256, d_model=384, n_heads=6, n_layers=6, d_ff=1536,
                          dropout=0.2, attn_dropout=0.2),
        train=TrainConfig(steps=5000, batch_size=64, lr=1e-3, schedule="cosine", warmup_steps=100,
                          min_lr_ratio=0.1, b2=0.99, weight_decay=0.1, eval_every=250, eval_batches=20,
                          checkpoint_every=500, log_every=10),
        data=DataConfig(path="karpathy/tiny_shakespeare", eval_split="validation", tokenizer="char",
                        seq_len=256),
    )
