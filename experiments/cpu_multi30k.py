"""The Transformer (Vaswani et al. 2017) on Multi30k German -> English, sized to train on a 2-core CPU.

    jaxlm train experiments/cpu_multi30k.py --run-dir runs/multi30k
    python -c "from jaxlm.evaluation import bleu_of_run; print(bleu_of_run('runs/multi30k'))"  # greedy + beam

The paper's architecture (post-norm, sinusoidal positions, ReLU FFN, one shared source/target embedding tied
to the output projection, label smoothing 0.1, Adam with beta2 = 0.98) at a small size: 3 encoder + 3 decoder
layers, d_model 256, 4 heads, FFN 1024, a 8,000-token byte-level BPE shared by German and English (the paper:
6 + 6 layers, 512 wide, 8 heads, FFN 2048, 37,000 BPE tokens; ``model.preset=transformer-base`` gives it).
Training 29,000 caption pairs; BLEU (sacrebleu, detokenised) on the 1,014 validation pairs.

Data: the hub dataset ``bentrevett/multi30k`` (columns ``en``, ``de``; train 29,000 / validation 1,014 / test
1,000 pairs), German ``de`` -> English ``en``, trained on train and evaluated on validation. Offline,
``JAXLM_DATA=DIR`` reads the line-aligned ``DIR/multi30k/{train,val}.{de,en}`` (no test split there).
"""

from jaxlm.models import transformer
from jaxlm.train.config import DataConfig, RunConfig, TrainConfig


def config() -> RunConfig:
    return RunConfig(
        model=transformer.Config(vocab_size=8000, max_len=64, d_model=256, n_heads=4, n_layers=3, d_ff=1024,
                                 dropout=0.1),
        train=TrainConfig(task="seq2seq", steps=1200, batch_size=128, lr=1e-3, schedule="cosine",
                          warmup_steps=100, b2=0.98, weight_decay=0.01, label_smoothing=0.1, eval_every=200,
                          eval_batches=8, checkpoint_every=200, log_every=20),
        data=DataConfig(path="bentrevett/multi30k", source_column="de", target_column="en",
                        eval_split="validation", tokenizer="bpe", vocab_size=8000, seq_len=32,
                        target_len=32),
    )
