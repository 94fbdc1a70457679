"""Greedy generation speed: jaxlm.generate vs Hugging Face transformers ``GPT2LMHeadModel.generate()``.

Same GPT-2-shaped model on both sides (6 layers, 6 heads, d_model 384, vocab 8192, random init, no
download): the HF model is built from a GPT2Config and its weights are copied into jaxlm's layout, so both
run the *same* network and the benchmark also checks they produce the same tokens. Prompt 32 tokens ->
256 new tokens (``min_new_tokens`` forces HF to produce all 256), batch 1 and batch 8, PyTorch on CPU.
Repeats are interleaved (jax, hf, jax, hf, ...) so machine noise hits both alike; we report medians and the
ratio. jaxlm's compile time is measured once and excluded from its tokens/s (reported separately).

    python benchmarks/generate.py [--repeats 5] [--batches 1 8] [--no-write]

Records the run (unless --no-write): its table replaces the ``generate.py`` section of benchmarks/RESULTS.md and its
full output is appended to benchmarks/HISTORY.md (benchmarks/_results.py).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _results import machine, now, record  # benchmarks/_results.py (this folder is on sys.path)

from jaxlm.generate import generate, kv_decode
from jaxlm.models import gpt2

HERE = Path(__file__).resolve().parent
PROMPT, NEW = 32, 256
CFG = gpt2.Config(vocab_size=8192, max_len=320, d_model=384, n_heads=6, n_layers=6, d_ff=1536, dropout=0.0,
                  attn_dropout=0.0)


def hf_model():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hcfg = GPT2Config(vocab_size=CFG.vocab_size, n_positions=CFG.max_len, n_embd=CFG.d_model,
                      n_layer=CFG.n_layers, n_head=CFG.n_heads, n_inner=CFG.d_ff, activation_function="gelu_new",
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=CFG.norm_eps,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return GPT2LMHeadModel(hcfg).eval()


def params_from_hf(model) -> dict:
    """GPT2LMHeadModel weights -> jaxlm's gpt2 tree (Conv1D weights are already [in, out])."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    D, H, K, L = CFG.d_model, CFG.n_heads, CFG.head_dim, CFG.n_layers

    def stack(fmt):
        return np.stack([sd[fmt.format(i)] for i in range(L)])

    qkv_w = stack("transformer.h.{}.attn.c_attn.weight").reshape(L, D, 3, H, K)
    qkv_b = stack("transformer.h.{}.attn.c_attn.bias").reshape(L, 3, H, K)
    layers = {
        "norm1": {"scale": stack("transformer.h.{}.ln_1.weight"), "bias": stack("transformer.h.{}.ln_1.bias")},
        "norm2": {"scale": stack("transformer.h.{}.ln_2.weight"), "bias": stack("transformer.h.{}.ln_2.bias")},
        "attn": {n: {"w": qkv_w[:, :, j], "b": qkv_b[:, j]} for j, n in enumerate("qkv")}
        | {"o": {"w": stack("transformer.h.{}.attn.c_proj.weight").reshape(L, H, K, D),
                 "b": stack("transformer.h.{}.attn.c_proj.bias")}},
        "mlp": {"wi": {"w": stack("transformer.h.{}.mlp.c_fc.weight"), "b": stack("transformer.h.{}.mlp.c_fc.bias")},
                "wo": {"w": stack("transformer.h.{}.mlp.c_proj.weight"),
                       "b": stack("transformer.h.{}.mlp.c_proj.bias")}},
    }
    p = {"embed": {"tokens": sd["transformer.wte.weight"], "positions": sd["transformer.wpe.weight"]},
         "layers": layers,
         "final_norm": {"scale": sd["transformer.ln_f.weight"], "bias": sd["transformer.ln_f.bias"]}}
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)


def run_jax(params, prompts, layers) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    out = generate(params, CFG, prompts, max_new_tokens=NEW, greedy=True, layers=layers)
    dt = time.perf_counter() - t
    return dt, np.array(out.tokens)


def run_hf(model, prompts) -> tuple[float, np.ndarray]:
    import torch

    ids = torch.tensor(prompts)
    with torch.inference_mode():
        t = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, min_new_tokens=NEW,
                             do_sample=False, pad_token_id=0)
        dt = time.perf_counter() - t
    return dt, out[:, PROMPT:].numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--no-write", action="store_true", help="print only; do not record in RESULTS.md / HISTORY.md")
    args = ap.parse_args(argv)

    import torch
    import transformers

    model = hf_model()
    params = params_from_hf(model)
    layers = kv_decode.split_layers(params, CFG)  # the per-layer weight copy, made once for every call
    rng = np.random.default_rng(0)
    rows = []
    for B in args.batches:
        prompts = rng.integers(1, CFG.vocab_size, (B, PROMPT)).tolist()
        t = time.perf_counter()
        _, jt = run_jax(params, prompts, layers)  # compile + first run
        compile_s = time.perf_counter() - t
        run_hf(model, prompts)  # warm-up
        tj, th, same = [], [], None
        for _ in range(args.repeats):
            dt, jt = run_jax(params, prompts, layers)
            tj.append(dt)
            dt, ht = run_hf(model, prompts)
            th.append(dt)
        same = float((jt == ht).mean())
        first_diff = [int(np.argmax(r != h)) if (r != h).any() else NEW for r, h in zip(jt, ht)]
        mj, mh = statistics.median(tj), statistics.median(th)
        best = min(th) / min(tj)
        rows.append(dict(B=B, jax=B * NEW / mj, hf=B * NEW / mh, ratio=mh / mj, best=best, compile=compile_s - mj,
                         same=same, first_diff=min(first_diff), tj=tj, th=th))
        print(f"batch {B}: jaxlm {B * NEW / mj:8.1f} tok/s  HF {B * NEW / mh:8.1f} tok/s  ratio {mh / mj:5.2f}x "
              f"(best runs {best:5.2f}x; jaxlm compile {compile_s - mj:.1f}s; same tokens {same:.1%})", flush=True)

    head = ("| batch | jaxlm tok/s | HF generate tok/s | jaxlm / HF (medians) | jaxlm / HF (best runs) | "
            "jaxlm runs (s) | HF runs (s) | same greedy tokens |\n|---:|---:|---:|---:|---:|---|---|---|")
    lines = [head]
    for r in rows:
        fmt = lambda ts: ", ".join(f"{t:.2f}" for t in ts)  # noqa: E731
        agree = f"{r['same']:.1%}" + ("" if r["same"] == 1 else f" (first difference at token {r['first_diff']})")
        lines.append(f"| {r['B']} | {r['jax']:.1f} | {r['hf']:.1f} | {r['ratio']:.2f}x | **{r['best']:.2f}x** | "
                     f"{fmt(r['tj'])} | {fmt(r['th'])} | {agree} |")
    table = "\n".join(lines)
    print(table)
    if args.no_write:
        return 0
    cmd = ("python benchmarks/generate.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    when, where = now(), machine()
    summary = ["| batch | jaxlm tok/s | HF tok/s | jaxlm / HF (medians) | (best runs) | same greedy tokens | machine | date "
               "| command |", "|---:|---:|---:|---:|---:|---|---|---|---|"]
    summary += [f"| {r['B']} | {r['jax']:.1f} | {r['hf']:.1f} | {r['ratio']:.2f}x | {r['best']:.2f}x | {r['same']:.1%} | "
                f"{where} | {when} | `{cmd}` |" for r in rows]
    log = f"""Greedy decoding, prompt {PROMPT} -> {NEW} new tokens, GPT-2-shaped model (6 layers, 6 heads, d_model 384,
vocab 8192, random init; the HF model's weights are copied into jaxlm so both run the same network).
jaxlm: `jaxlm.generate.generate(..., greedy=True)` (prefill + decode loop in one jit, KV cache preallocated).
HF: `GPT2LMHeadModel.generate(do_sample=False, min_new_tokens={NEW})`, PyTorch CPU, `inference_mode`.
Median of {args.repeats} interleaved runs (jaxlm, HF, jaxlm, HF, ...); jaxlm compile time excluded
({", ".join(f"batch {r['B']}: {r['compile']:.1f} s" for r in rows)}, paid once per shape).

{table}

- date: {when}; machine: {where}
- versions: python {platform.python_version()}, jax {jax.__version__}, torch {torch.__version__},
  transformers {transformers.__version__}; torch threads {torch.get_num_threads()}
- command: `{cmd}`
- individual runs are listed so the spread is visible. PyTorch suffers more from a busy machine than XLA
  (its threads wait on each other), so the ratio of medians flatters jaxlm when runs were disturbed; the
  ratio of the best (least disturbed) runs is the conservative figure.
"""
    record("generate.py", "\n".join(summary), log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
