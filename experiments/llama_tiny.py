"""A small LLaMA (RMSNorm, RoPE, SwiGLU, grouped-query attention) on Tiny Shakespeare with byte-level BPE.

Quick run: ``model.preset=llama-tiny train.steps=50 data.seq_len=64``.

Data: the hub dataset ``karpathy/tiny_shakespeare`` (one ``text`` row per split: train 1,003,854 characters,
validation and test 55,770 each), trained on train and evaluated on validation. Offline, ``JAXLM_DATA=DIR``
reads char-rnn's ``input.txt`` from ``DIR/tinyshakespeare/`` and cuts the same three splits from it.
"""

from jaxlm.models import llama
from jaxlm.train.config import DataConfig, RunConfig, TrainConfig


def config() -> RunConfig:
    return RunConfig(
        model=llama.Config(vocab_size=2048, max_len=256, d_model=256, n_heads=8, n_kv_heads=2, n_layers=4,
                           d_ff=688, tie_embeddings=True),
        train=TrainConfig(steps=3000, batch_size=32, lr=1e-3, warmup_steps=100, b2=0.95, weight_decay=0.1,
                          eval_every=250, checkpoint_every=500),
        data=DataConfig(path="karpathy/tiny_shakespeare", eval_split="validation", tokenizer="bpe",
                        seq_len=256),
    )
