"""The main demo (``make demo``): train a small GPT on the Python standard library's own source code.

Every machine with Python has this corpus: the ``.py`` files at the top of the standard library directory
(found with ``sysconfig``, about 4.7 MB), read through Hugging Face ``datasets`` (one document per file; every
20th file held out for validation), tokenized with a byte-level BPE trained on the training files. The script
prints the validation loss and perplexity before and after training, the unigram baseline (the entropy of
the training-token distribution: the best loss without context), saves a checkpoint, and samples a
continuation of a prompt from the trained model.

    python experiments/demo.py [key=value ...] [--run-dir runs/demo]       # what `make demo` runs
    jaxlm train experiments/demo.py --run-dir runs/demo                    # the same training, as a command
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
import time

from jaxlm.models import gpt2
from jaxlm.train.config import DataConfig, RunConfig, TrainConfig

PROMPT = "def __init__(self"


def config() -> RunConfig:
    return RunConfig(
        model=gpt2.Config(vocab_size=2048, max_len=128, d_model=128, n_heads=4, n_layers=4, d_ff=512,
                          dropout=0.0, attn_dropout=0.0),
        train=TrainConfig(steps=600, batch_size=32, lr=2e-3, warmup_steps=50, schedule="cosine", b2=0.99,
                          weight_decay=0.1, log_every=20, eval_every=200, eval_batches=16,
                          checkpoint_every=200),
        data=DataConfig(path=sysconfig.get_paths()["stdlib"], glob="*.py", tokenizer="bpe", seq_len=128,
                        eval_fraction=0.05),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. train.steps=100)")
    p.add_argument("--run-dir", default="runs/demo", help="run directory (replaced: the demo starts fresh)")
    args = p.parse_args(argv)

    from jaxlm.generate import generate
    from jaxlm.pretrained import load_run
    from jaxlm.train import config as C
    from jaxlm.train.loop import train

    t0 = time.time()
    run = C.apply_overrides(config(), args.overrides)
    print(f"corpus: {run.data.path}/{run.data.glob} (the Python standard library's own source)")
    shutil.rmtree(args.run_dir, ignore_errors=True)  # always train from scratch: show before and after
    out = train(run, args.run_dir)
    before, after, info = out["first_eval"], out["last_eval"], out["info"]
    unigram = info["unigram_entropy"]
    print("\n=== results ===")
    print(f"training tokens: {info['train_tokens']:,}; BPE vocabulary: {info['tokenizer_vocab']}")
    print(f"validation loss before training: {before['eval_loss']:.3f} nats (perplexity {before['eval_ppl']:.1f})")
    print(f"validation loss after training:  {after['eval_loss']:.3f} nats (perplexity {after['eval_ppl']:.1f})")
    print(f"unigram baseline (training-token entropy): {unigram:.3f} nats (perplexity {2.718281828 ** unigram:.1f})")
    ratio = after["eval_loss"] / unigram
    print(f"final validation loss = {ratio:.2f} x the unigram baseline")

    loaded = load_run(args.run_dir)  # from the saved checkpoint, as any user would
    print(f"checkpoint: {args.run_dir}/checkpoints/{loaded.extra['step']}")
    tok = loaded.tokenizer
    ids = tok.encode(PROMPT, add_special_tokens=False).ids
    gen = generate(loaded.params, loaded.config, [ids], max_new_tokens=96, temperature=0.8, top_k=40, seed=0,
                   stop_tokens=[loaded.extra["specials"]["eos"]])
    print(f"\nsample (temperature 0.8, top-k 40) continuing {PROMPT!r}:\n" + "-" * 60)
    print(PROMPT + tok.decode(gen.tokens[0]))
    print("-" * 60 + f"\ndemo finished in {time.time() - t0:.0f} s")
    if not ratio < 0.7:
        print(f"FAILED: final loss {after['eval_loss']:.3f} is not far below the unigram baseline {unigram:.3f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
