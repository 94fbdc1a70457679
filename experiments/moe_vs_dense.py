"""What a mixture of experts buys: a dense decoder and an MoE decoder with the same *active* parameters,
trained on the same data for the same steps, compared by validation loss and tokens/s.

Both are the LLaMA-style stack (RMSNorm, RoPE, SwiGLU, grouped-query attention). The dense model's FFN has
width ``d_ff``; the MoE model (the ``mixtral`` family) replaces it with 8 experts of width ``d_ff / 2`` of
which each token uses 2, so a token touches the same number of FFN parameters (and FLOPs) while the layer
holds 4x as many. The MoE objective adds the load-balancing loss (weight 0.01), so the comparison is by
validation NLL (``eval_nll``: cross-entropy only), not by the objective.

Corpus: the Python standard library's own ``.py`` files, as ``experiments/demo.py`` uses (every machine with
Python has it), byte-level BPE trained on the training files.

    python experiments/moe_vs_dense.py [--steps 200] [--out experiments/results/moe_vs_dense.json]

prints a table (validation NLL before/after, parameters total / active, tokens/s, wall time) and writes it
as JSON. Numbers in experiments/README.md are from the command there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from jaxlm import models
from jaxlm import params as P
from jaxlm.models import llama, mixtral
from jaxlm.train.config import DataConfig, RunConfig, TrainConfig

D_MODEL, N_LAYERS, N_HEADS, D_FF, VOCAB, SEQ = 64, 2, 4, 256, 512, 64


def dense_model() -> llama.Config:
    return llama.Config(vocab_size=VOCAB, max_len=SEQ, d_model=D_MODEL, n_heads=N_HEADS, n_kv_heads=2,
                        n_layers=N_LAYERS, d_ff=D_FF, tie_embeddings=True)


def moe_model() -> mixtral.Config:
    # 8 experts of width D_FF / 2, top-2: the active FFN width is D_FF, as in the dense model
    return mixtral.Config(vocab_size=VOCAB, max_len=SEQ, d_model=D_MODEL, n_heads=N_HEADS, n_kv_heads=2,
                          n_layers=N_LAYERS, d_ff=D_FF // 2, n_experts=8, top_k=2, rope_theta=10000.0,
                          tie_embeddings=True, aux_loss_weight=0.01)


def config(model, steps: int) -> RunConfig:
    return RunConfig(
        model=model,
        train=TrainConfig(steps=steps, batch_size=16, lr=3e-3, warmup_steps=steps // 10, schedule="cosine",
                          b2=0.99, weight_decay=0.1, log_every=10, eval_every=0, eval_batches=8,
                          checkpoint_every=0, best_metric="", progress=False, tensorboard=False, plot=False),
        data=DataConfig(path=sysconfig.get_paths()["stdlib"], glob="*.py", tokenizer="bpe", seq_len=SEQ,
                        eval_fraction=0.1, max_examples=60),
    )


def run_one(name: str, model, steps: int, root: Path) -> dict:
    from jaxlm.train.loop import train

    run_dir = root / name
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    out = train(config(model, steps), run_dir)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    last = [r for r in rows if "loss" in r][-1]
    total = P.count(models.family_of(model).spec(model))
    return {"model": name, "params_total": total, "params_active": models.active_params(model),
            "eval_nll_before": out["first_eval"]["eval_nll"], "eval_nll_after": out["last_eval"]["eval_nll"],
            "train_nll_last": last["nll"], "tokens_per_s": sum(rates) / len(rates) if rates else None,
            "wall_s": wall, "moe_aux_loss_last": last.get("moe_aux_loss"),
            "moe_load_last": [last[k] for k in sorted(last) if k.startswith("moe_load_")] or None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", default="experiments/results/moe_vs_dense.json")
    p.add_argument("--run-root", default="", help="where the two run directories go (default: a temp dir)")
    args = p.parse_args(argv)
    root = Path(args.run_root or tempfile.mkdtemp(prefix="moe_vs_dense_"))
    res = [run_one("dense", dense_model(), args.steps, root), run_one("moe-8x-top2", moe_model(), args.steps, root)]
    print("\n| model | params (total) | params (active) | val NLL before | val NLL after | tokens/s | wall |")
    print("|---|---|---|---|---|---|---|")
    for r in res:
        print(f"| {r['model']} | {r['params_total']:,} | {r['params_active']:,} | {r['eval_nll_before']:.3f} | "
              f"{r['eval_nll_after']:.3f} | {r['tokens_per_s']:.0f} | {r['wall_s']:.0f} s |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"steps": args.steps, "results": res}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
