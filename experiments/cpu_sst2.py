"""BERT on SST-2 sentiment, sized to train on a 2-core CPU: from scratch, and after MLM pre-training.

    # 1. fine-tune from random init
    jaxlm train experiments/cpu_sst2.py --run-dir runs/sst2_scratch
    # 2. MLM pre-training on the SST-2 training sentences (labels unused), then fine-tuning from it
    jaxlm train experiments/cpu_sst2.py train.task=mlm train.steps=1500 train.lr=1e-3 --run-dir runs/sst2_mlm
    jaxlm train experiments/cpu_sst2.py train.init_from=runs/sst2_mlm --run-dir runs/sst2_finetuned
    jaxlm eval runs/sst2_finetuned          # eval_accuracy on the 872 dev sentences

BERT's architecture (post-norm, learned positions, exact GELU, pooler + classifier on [CLS]) at 4 layers,
256 wide, 4 heads, FFN 1024, a 8,000-token BPE trained on the SST-2 training sentences (the paper: 12 layers,
768 wide, 30,522 WordPiece tokens, pre-trained on 3.3 B words; ``model.preset=bert-base``).

Data: the hub dataset ``nyu-mll/glue`` config ``sst2`` (``sentence``, ``label`` 0 negative / 1 positive,
``idx``; train 67,349 / validation 872 / test 1,821 unlabelled), trained on train and scored on validation.
Offline, ``JAXLM_DATA=DIR`` reads ``DIR/sst2/{train,dev}.tsv`` (dev = validation) with the same columns.
"""

from jaxlm.models import bert
from jaxlm.train.config import DataConfig, RunConfig, TrainConfig

SST2 = {"path": "nyu-mll/glue", "hub_config": "sst2", "text_column": "sentence"}  # GLUE SST-2 on the hub


def config() -> RunConfig:
    return RunConfig(
        model=bert.Config(vocab_size=8000, max_len=64, d_model=256, n_heads=4, n_layers=4, d_ff=1024,
                          dropout=0.1, attn_dropout=0.1, num_labels=2),
        train=TrainConfig(task="classification", steps=1500, batch_size=64, lr=3e-4, schedule="cosine",
                          warmup_steps=100, weight_decay=0.01, eval_every=250, eval_batches=14,
                          checkpoint_every=250, log_every=25, best_metric="eval_loss"),
        data=DataConfig(**SST2, eval_split="validation", label_column="label", tokenizer="bpe", vocab_size=8000,
                        seq_len=64),
    )
