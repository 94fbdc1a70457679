"""What bounds batch-1 decoding on this machine: memory bandwidth, measured next to jaxlm's decode.

At batch 1 every new token reads every weight once (55.7 MB in float32 for the benchmark model of
benchmarks/generate.py) and does 2 FLOPs per weight, so the step is limited by how fast weights stream
from memory, not by arithmetic. This script measures, in one process:

1. **streaming bandwidth**: numpy's single-threaded matrix-vector product (OpenBLAS) over a matrix that
   stays in the last-level cache (8 MB) and one that does not (64 MB), on one thread and on two threads at
   once (aggregate) — what one core and both cores can pull from memory;
2. **jaxlm's decode** (``generate(..., greedy=True)``, prompt 32 -> 256 new tokens, batch 1) with float32
   weights on one device, the same weights split tensor-parallel over 2 CPU devices (one per core,
   ``--xla_force_host_platform_device_count=2``, ``sharding.param_shardings`` + ``use_mesh``), and bfloat16
   weights and compute; each as tokens/s and as the weight bytes per second it implies.

Runs are interleaved (variant A, B, C, A, B, C, ...) and reported as medians, so machine noise hits all
alike. Weights are random (the same ``gpt2.init`` for every variant); every variant's greedy tokens and
first-token logits are compared with the float32 single-device ones (a random model's greedy stream repeats
a few tokens, so token agreement alone says little about bfloat16; the logit difference does).

    python benchmarks/decode_bound.py [--repeats 7] [--no-write]

Records the run (unless --no-write): its table replaces the ``decode_bound.py`` section of benchmarks/RESULTS.md
("What bounds batch-1 decoding") and its full output is appended to benchmarks/HISTORY.md (benchmarks/_results.py).
"""

from __future__ import annotations

import os

# Two CPU devices for the tensor-parallel variant (must be set before jax is imported). The single-device
# variants run on the first of them.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's gemv: one thread per Python thread

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxlm import sharding  # noqa: E402
from jaxlm.generate import generate, kv_decode  # noqa: E402
from jaxlm.models import gpt2  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import machine, now, record  # noqa: E402  (benchmarks/_results.py)
from generate import CFG, NEW, PROMPT  # noqa: E402


def gemv_bandwidth(mb: float, threads: int, seconds: float = 1.0) -> float:
    """Aggregate GB/s of ``threads`` Python threads each running numpy ``x @ W`` over its own ``mb`` MB
    float32 matrix [256, N] (numpy releases the GIL inside BLAS, so the threads run on separate cores)."""
    n = int(mb * 2**20 / 4 / 256)
    mats = [np.random.default_rng(i).standard_normal((256, n), dtype=np.float32) for i in range(threads)]
    x = np.ones(256, np.float32)
    reps = max(3, int(seconds * 25e9 / (mb * 2**20)))  # ~seconds at 25 GB/s
    done = [0.0] * threads

    def work(i: int) -> None:
        x @ mats[i]
        t = time.perf_counter()
        for _ in range(reps):
            x @ mats[i]
        done[i] = time.perf_counter() - t

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return threads * reps * mb * 2**20 / max(done) / 1e9


def weight_bytes(params) -> int:
    """Bytes of the weights a decode step streams: everything but the position table (one row per step)."""
    return sum(x.nbytes for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
               if "positions" not in jax.tree_util.keystr(p))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-write", action="store_true", help="print only; do not record in RESULTS.md / HISTORY.md")
    args = ap.parse_args(argv)
    if len(jax.devices()) < 2:
        raise SystemExit(f"need 2 CPU devices for the tensor-parallel variant, got {jax.devices()}; "
                         f"run with JAX_PLATFORMS=cpu")

    bw = {(mb, th): gemv_bandwidth(mb, th) for mb in (8, 64) for th in (1, 2)}
    for (mb, th), v in bw.items():
        print(f"numpy gemv, {mb} MB matrix, {th} thread(s): {v:.1f} GB/s aggregate", flush=True)

    params = gpt2.init(jax.random.key(0), CFG)
    mesh = sharding.make_mesh(data=1, fsdp=1, tensor=2, devices=jax.devices()[:2])
    variants = {
        "float32, 1 device": (params, CFG, None),
        "float32, tensor-parallel over 2 CPU devices": (
            jax.device_put(params, sharding.param_shardings(gpt2.spec(CFG), mesh)), CFG, mesh),
        "bfloat16 weights and compute, 1 device": (
            jax.tree.map(lambda a: a.astype(jnp.bfloat16), params), CFG.replace(dtype="bfloat16"), None),
    }
    prompt = np.random.default_rng(0).integers(1, CFG.vocab_size, (1, PROMPT)).tolist()

    with_layers = {}
    for p, cfg, m in variants.values():  # the per-layer weight copy, made once per variant
        with sharding.use_mesh(m):
            with_layers[id(p)] = kv_decode.split_layers(p, cfg)

    def run(p, cfg, m, logits: bool = False):
        t = time.perf_counter()
        with sharding.use_mesh(m):
            out = generate(p, cfg, prompt, max_new_tokens=NEW, greedy=True, return_logits=logits,
                           layers=with_layers[id(p)])
        return time.perf_counter() - t, out

    checks = {k: run(*v, logits=True)[1] for k, v in variants.items()}
    for v in variants.values():  # compile the timed (no-logits) program
        run(*v)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, v in variants.items():
            times[k].append(run(*v)[0])
    ref = checks["float32, 1 device"]
    rows = []
    for k, (p, _, _) in variants.items():
        med = statistics.median(times[k])
        nbytes = weight_bytes(p)
        same = float(np.mean(np.array(checks[k].tokens[0]) == np.array(ref.tokens[0])))
        # logits of the first new token: the same input for every variant, whatever tokens followed
        dlogit = float(np.abs(checks[k].logits[0, 0] - ref.logits[0, 0]).max())
        rows.append((k, NEW / med, 1e3 * med / NEW, nbytes / 1e6, nbytes * NEW / med / 1e9, same, dlogit))
        print(f"{k}: {NEW / med:.1f} tok/s, {1e3 * med / NEW:.2f} ms/token, {nbytes * NEW / med / 1e9:.1f} GB/s "
              f"of weights, same tokens {same:.0%}, max |logit diff| {dlogit:.1e}", flush=True)
    base = rows[0][1]

    table = ["| decode variant (batch 1) | tok/s | ms / token | vs float32 1 device | weights / token (MB) | "
             "weights streamed (GB/s) | same greedy tokens | max \\|logit diff\\| (1st token) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {k} | {tps:.1f} | {ms:.2f} | {tps / base:.2f}x | {mb:.1f} | {gbs:.1f} | {same:.0%} | {d:.1e} |"
              for k, tps, ms, mb, gbs, same, d in rows]
    bw_table = ["| numpy gemv (OpenBLAS, 1 thread each) | 1 thread | 2 threads (aggregate) |", "|---|---:|---:|"]
    bw_table += [f"| {mb} MB matrix{' (stays in the 32 MB L3)' if mb == 8 else ' (streams from memory)'} | "
                 f"{bw[(mb, 1)]:.1f} GB/s | {bw[(mb, 2)]:.1f} GB/s |" for mb in (8, 64)]
    cmd = ("python benchmarks/decode_bound.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    when, where = now(), machine()
    log = f"""Median of {args.repeats} interleaved runs; the same random weights for every variant; prompt {PROMPT} -> {NEW}
new tokens (the docstring of `benchmarks/decode_bound.py` says what each row is).

{chr(10).join(bw_table)}

{chr(10).join(table)}

- date: {when}; machine: {where}
- versions: python {platform.python_version()}, jax {jax.__version__}, numpy {np.__version__}
- command: `{cmd}`
"""
    print(log)
    if args.no_write:
        return 0
    f32, tp, bf16 = rows  # (name, tok/s, ms/token, MB/token, GB/s, same tokens, max |logit diff|)
    summary = [f"| measurement | {where}, {when} |", "|---|---:|",
               f"| numpy gemv, 64 MB matrix (streams from memory), 1 / 2 threads | {bw[(64, 1)]:.1f} / "
               f"{bw[(64, 2)]:.1f} GB/s |",
               f"| numpy gemv, 8 MB matrix, 1 / 2 threads | {bw[(8, 1)]:.1f} / {bw[(8, 2)]:.1f} GB/s |",
               f"| jaxlm decode, float32, 1 device | {f32[1]:.1f} tok/s, {f32[2]:.2f} ms/token, {f32[4]:.1f} GB/s |",
               f"| float32, tensor-parallel over 2 CPU devices | {tp[1] / base:.2f}x ({tp[1]:.1f} tok/s) |",
               f"| bfloat16 weights and compute, 1 device | {bf16[1] / base:.2f}x ({bf16[1]:.1f} tok/s; max logit diff "
               f"{bf16[6]:.1e}) |",
               f"| command | `{cmd}` |"]
    record("decode_bound.py", "\n".join(summary), log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
