"""Training speed: jaxlm's real training step against PyTorch peers, side by side on this machine.

jaxlm runs the step ``jaxlm train`` runs: ``train.tasks.Task("causal_lm").loss`` -> ``train.step.make_train_step``
-> ``parallel.Parallel.compile`` (one ``jax.jit``, state donated), AdamW from ``train.optim.make_optimizer``.
A plain-JAX row (``plain-jax``, benchmarks/jax_gpt.py: stacked weights, ``lax.scan``,
``jax.nn.dot_product_attention``, ``optax.adamw``) shows what jaxlm's layers cost over JAX written by hand.
Peers: Hugging Face ``GPT2LMHeadModel`` (random init from a ``GPT2Config``, no download; eager) and the plain
PyTorch GPT of ``benchmarks/torch_gpt.py`` (eager and ``torch.compile``), ``torch.optim.AdamW``.
Same model on every side: GPT-2 architecture, 6 layers, 6 heads, d_model 384, d_ff 1536, vocab 8192 (or
50,257), sequence 256, batch 8, float32, no dropout, AdamW (lr 3e-4, wd 0.01), no gradient clipping.

Each implementation runs in its own subprocess (so peak RSS is per implementation and nothing is shared), and
the subprocesses are interleaved in rounds (jaxlm, hf, torch, torch-compile, jaxlm, ...) so that machine load
hits every implementation alike. Per round: ``--warmup`` steps (the first includes compilation), then
``--steps`` timed steps; tokens/s is reported as the median over all timed steps of all rounds, with the
interquartile spread.

MFU = achieved model FLOP/s / peak, with model FLOPs per trained token (PaLM appendix B convention, causal
attention counted in full, embedding lookups, norms, biases and the optimizer not counted):

    flops_per_token = 6 * N + 12 * L * T * d_model,   N = L * (4 * d_model^2 + 2 * d_model * d_ff) + V * d_model

(N = weights used in matmuls: q, k, v, o, the FFN and the tied LM head.) The peak is the float32 matmul
throughput of a jitted 4096 x 4096 @ 4096 x 4096 ``jnp.dot`` measured in its own subprocess in the same run
(best of before/after the training rounds).

    python benchmarks/train.py                         # the main table (vocab 8192)
    python benchmarks/train.py --vocab 50257
    python benchmarks/train.py --impls jaxlm jaxlm:attn_impl=flash ...   # levers, one by one
    python benchmarks/train.py --depth                 # compile time vs depth, scan vs unrolled
    python benchmarks/train.py --memory                # peak RSS at 24 layers, remat on/off
    python benchmarks/train.py --xent-memory --batch 16 --seq 1024   # compiled memory, plain vs fused xent
    python benchmarks/train.py --profile --impls jaxlm jaxlm:remat=dots_no_batch   # where the step's time goes

An implementation name ``jaxlm:k=v,k=v`` overrides model-config fields (``attn_impl``, ``remat``,
``scan_layers``, ``n_layers``) for that run. Results are printed as a markdown table with the command that
produced it (nothing is written): benchmarks/RESULTS.md "Training" holds the current figures, copied there by hand
with their machine, date and command, and benchmarks/HISTORY.md the dated runs they come from.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = dict(d_model=384, n_heads=6, n_layers=6, d_ff=1536)
LR, WD = 3e-4, 0.01


# ------------------------------------------------------------------------------------------ the workers --
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _batch(args):
    import numpy as np

    rng = np.random.default_rng(0)
    toks = rng.integers(0, args.vocab, (args.batch, args.seq + 1), dtype=np.int32)
    return toks[:, :-1], toks[:, 1:]


def _time_steps(run, args) -> dict:
    """run() performs one step and blocks until it is done. First call = compile + step."""
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        run()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"first_s": first, "times": times}


def build_jaxlm(args, overrides: dict):
    """(run, box, info): ``run()`` = one real jaxlm train step (blocks); info has compile_s and XLA analysis."""
    overrides = dict(overrides)
    xent = overrides.pop("xent", "plain")
    import jax
    import jax.numpy as jnp

    from jaxlm.models import gpt2
    from jaxlm.parallel import Parallel
    from jaxlm.train import optim, tasks
    from jaxlm.train.config import TrainConfig
    from jaxlm.train.state import create_state
    from jaxlm.train.step import make_train_step

    mc = dict(MODEL, vocab_size=args.vocab, max_len=args.seq, dropout=0.0, attn_dropout=0.0)
    mc.update(overrides)
    cfg = gpt2.Config(**mc)
    tc = TrainConfig(lr=LR, schedule="constant", warmup_steps=0, weight_decay=WD, clip_norm=None)
    optimizer = optim.make_optimizer(tc, cfg)
    task = tasks.make_task("causal_lm")
    if xent == "fused":  # same loss, computed by jaxlm.nn.xent without materialising the logits
        task = tasks.make_task("causal_lm", fused=True)
    par = Parallel(None, model_cfg=cfg, batch_size=args.batch)
    state = par.init_state(create_state, jax.random.key(0), cfg, optimizer)
    step = par.compile(make_train_step(task, cfg, optimizer), state)
    x, y = _batch(args)
    B, T = x.shape
    batch = par.place_batch({"inputs": x, "targets": y, "weights": jnp.ones((B, T), jnp.float32),
                             "segment_ids": jnp.ones((B, T), jnp.int32),
                             "positions": jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))})
    box = {"state": state}
    from jaxlm import sharding

    # ahead-of-time lower + compile, timed alone; then run that executable (same jit, same donation)
    t0 = time.perf_counter()
    with sharding.use_mesh(par.mesh, par.rules):
        fn = step.jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    analysis = {}
    try:  # XLA's static view of the step: independent of machine load
        ma = fn.memory_analysis()
        analysis["temp_mb"] = ma.temp_size_in_bytes / 2**20
        analysis["args_mb"] = ma.argument_size_in_bytes / 2**20
        ca = fn.cost_analysis()
        ca = ca[0] if isinstance(ca, list) else ca
        analysis["gflop"] = ca.get("flops", float("nan")) / 1e9
        analysis["gb_accessed"] = ca.get("bytes accessed", float("nan")) / 1e9
    except Exception as e:  # noqa: BLE001 - analysis is optional information
        analysis["error"] = repr(e)

    def run():
        box["state"], m = fn(box["state"], batch)
        box["loss"] = float(m["loss"])  # blocks until the step is done

    return run, box, {"compile_s": compile_s, "analysis": analysis}


# what XLA:CPU's op names (the HLO instruction each thunk runs) say they are, first match wins
PROFILE_KINDS = (
    ("matmul (dot / YNNPACK fusions)", ("ynn_fusion", "dot")),
    ("scan residuals: dynamic-(update-)slice", ("dynamic-update-slice", "dynamic-slice")),
    ("buffer fills (broadcast)", ("wrapped_broadcast",)),
    ("copies and transposes", ("copy", "transpose")),
    ("softmax / cross-entropy (exp, reductions)", ("exponential", "reduce", "log")),
    ("scatter / gather", ("scatter", "gather")),
    ("other elementwise fusions", ("fusion", "wrapped_")),
)
_CONTROL = ("ThunkExecutor", "SlinkyThreadPool", "while", "end: ", "call", "conditional")


def profile_step(run, steps: int) -> dict:
    """Milliseconds per step by kind of XLA op, summed over XLA's compute threads (CPU time, not wall), from
    a ``jax.profiler`` trace of ``steps`` calls of ``run``; plus the wall time per step."""
    import glob
    import re
    import tempfile

    import jax
    from jax.profiler import ProfileData

    d = tempfile.mkdtemp(prefix="jaxlm-profile-")
    t0 = time.perf_counter()
    with jax.profiler.trace(d):
        for _ in range(steps):
            run()
    wall = (time.perf_counter() - t0) / steps
    kinds: dict[str, float] = {k: 0.0 for k, _ in PROFILE_KINDS}
    for f in glob.glob(d + "/**/*.xplane.pb", recursive=True):
        for plane in ProfileData.from_file(f).planes:
            for line in plane.lines:
                if "XLAEigen" not in line.name:  # XLA's compute threads
                    continue
                for ev in line.events:
                    name = re.sub(r"\.\d+$", "", ev.name)
                    if name.startswith(_CONTROL):
                        continue
                    kind = next((k for k, keys in PROFILE_KINDS if any(x in name for x in keys)), None)
                    if kind is not None:
                        kinds[kind] += ev.duration_ns / 1e6 / steps
    return {"wall_ms": wall * 1e3, "kinds_ms": kinds}


def worker_jaxlm(args, overrides: dict) -> dict:
    run, box, info = build_jaxlm(args, overrides)
    if args.steps == 0:  # compile only (the depth table)
        return dict(info, times=[], first_s=None, loss=None)
    if args.profile:
        for _ in range(args.warmup):
            run()
        return dict(info, profile=profile_step(run, args.steps), loss=box["loss"])
    out = _time_steps(run, args)
    out.update(loss=box["loss"], **info)
    return out


def _torch_setup(args, which: str):
    import torch

    torch.manual_seed(0)
    x, y = (torch.from_numpy(a.astype("int64")) for a in _batch(args))
    if which == "hf":
        from transformers import GPT2Config, GPT2LMHeadModel

        hc = GPT2Config(vocab_size=args.vocab, n_positions=args.seq, n_embd=MODEL["d_model"],
                        n_layer=args.layers or MODEL["n_layers"], n_head=MODEL["n_heads"], n_inner=MODEL["d_ff"],
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(hc).train()

        def loss_fn():
            # HF shifts labels inside: same [B, T] inputs (same compute), T - 1 targets per row
            return model(input_ids=x, labels=x).loss
    else:
        sys.path.insert(0, str(HERE))
        from torch_gpt import GPT

        model = GPT(args.vocab, args.seq, MODEL["d_model"], MODEL["n_heads"], args.layers or MODEL["n_layers"],
                    MODEL["d_ff"]).train()
        fwd = torch.compile(model) if which == "torch-compile" else model

        def loss_fn():
            return fwd(x, y)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR)
    return model, opt, loss_fn


def build_torch(args, which: str):
    model, opt, loss_fn = _torch_setup(args, which)
    box = {}

    def run():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        box["loss"] = float(loss.detach())

    return run, box, {}


def build_plain_jax(args):
    """(run, box, info) for the minimal GPT of benchmarks/jax_gpt.py: what jaxlm's layers cost over plain JAX."""
    import jax

    sys.path.insert(0, str(HERE))
    import jax_gpt

    L = args.layers or MODEL["n_layers"]
    params = jax_gpt.init(jax.random.key(0), args.vocab, args.seq, MODEL["d_model"], MODEL["n_heads"], L,
                          MODEL["d_ff"])
    opt, step = jax_gpt.make_step(MODEL["n_heads"], LR, WD)
    x, y = (jax.numpy.asarray(a) for a in _batch(args))
    box = {"params": params, "opt": opt.init(params)}
    t0 = time.perf_counter()
    fn = step.lower(box["params"], box["opt"], x, y).compile()
    compile_s = time.perf_counter() - t0
    ma = fn.memory_analysis()
    analysis = {"temp_mb": ma.temp_size_in_bytes / 2**20, "args_mb": ma.argument_size_in_bytes / 2**20}

    def run():
        box["params"], box["opt"], loss = fn(box["params"], box["opt"], x, y)
        box["loss"] = float(loss)

    return run, box, {"compile_s": compile_s, "analysis": analysis}


def worker_torch(args, which: str) -> dict:
    import torch

    run, box, _ = build_torch(args, which)
    out = _time_steps(run, args)
    out.update(loss=box["loss"], threads=torch.get_num_threads())
    return out


def _jaxlm_overrides(impl: str, args) -> dict:
    ov = _overrides(impl)
    if args.layers:
        ov.setdefault("n_layers", args.layers)
    return ov


def worker_paired(args) -> dict:
    """All ``--paired`` implementations in this one process, stepped in turn (a, b, c, a, b, c, ...; the
    order rotates every round) so that changes in machine load hit each of them alike. Returns per-impl step
    times aligned by round (for paired ratios)."""
    impls = args.paired
    runners = {}
    for impl in impls:
        t0 = time.perf_counter()
        if impl.startswith("jaxlm"):
            runners[impl] = build_jaxlm(args, _jaxlm_overrides(impl, args))
        elif impl == "plain-jax":
            runners[impl] = build_plain_jax(args)
        else:
            runners[impl] = build_torch(args, impl)
        run = runners[impl][0]
        run()  # compile (jaxlm AOT compile happened in build) / torch.compile's first call
        runners[impl][2]["first_s"] = time.perf_counter() - t0
        for _ in range(args.warmup - 1):
            run()
        print(f"built {impl} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    times = {i: [] for i in impls}
    for r in range(args.steps):
        order = impls[r % len(impls):] + impls[: r % len(impls)]
        for impl in order:
            t0 = time.perf_counter()
            runners[impl][0]()
            times[impl].append(time.perf_counter() - t0)
        print(f"round {r}: " + ", ".join(f"{i} {times[i][-1]:.2f}s" for i in impls), file=sys.stderr, flush=True)
    return {"times": times, "loss": {i: runners[i][1]["loss"] for i in impls},
            "info": {i: runners[i][2] for i in impls}}


def worker_peak(args) -> dict:
    import jax
    import jax.numpy as jnp

    n = 4096
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"gflops": 2 * n**3 / min(times) / 1e9, "times": times}


def worker(args) -> dict:
    impl = args.worker
    if impl == "peak":
        out = worker_peak(args)
    elif impl == "paired":
        out = worker_paired(args)
    elif impl.startswith("jaxlm"):
        out = worker_jaxlm(args, _jaxlm_overrides(impl, args))
    elif impl == "plain-jax":
        run, box, info = build_plain_jax(args)
        out = _time_steps(run, args)
        out.update(loss=box["loss"], **info)
    else:
        out = worker_torch(args, impl)
    out.update(impl=impl, rss_mb=_rss_mb())
    return out


def _overrides(impl: str) -> dict:
    out = {}
    if ":" in impl:
        for kv in impl.split(":", 1)[1].split(","):
            k, v = kv.split("=")
            out[k] = {"true": True, "false": False}.get(v.lower(), int(v) if v.isdigit() else v)
    return out


# ------------------------------------------------------------------------------------------- the driver --
def spawn(impl: str, args, **extra) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--vocab", str(args.vocab), "--seq", str(args.seq),
           "--batch", str(args.batch), "--steps", str(extra.get("steps", args.steps)),
           "--warmup", str(extra.get("warmup", args.warmup))]
    if extra.get("layers") or args.layers:
        cmd += ["--layers", str(extra.get("layers") or args.layers)]
    if extra.get("paired"):
        cmd += ["--paired", *extra["paired"]]
    if extra.get("profile"):
        cmd += ["--profile"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    log = open(args.log, "a") if args.log else subprocess.DEVNULL  # noqa: SIM115 - worker progress
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log if args.log else subprocess.PIPE, text=True,
                           env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        if args.log:
            log.close()
        print(f"  {impl}: timed out after {args.timeout} s", file=sys.stderr)
        return {"impl": impl, "error": f"timed out after {args.timeout} s", "stderr": ""}
    if args.log:
        log.close()
    if p.returncode != 0:
        err = (((p.stderr or "").strip().splitlines()) or ["see the log"])[-1] + f" (exit code {p.returncode})"
        print(f"  {impl}: FAILED ({err})", file=sys.stderr)
        return {"impl": impl, "error": err, "stderr": (p.stderr or "")[-4000:]}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


def flops_per_token(vocab: int, layers: int, seq: int) -> float:
    d, f = MODEL["d_model"], MODEL["d_ff"]
    n = layers * (4 * d * d + 2 * d * f) + vocab * d
    return 6 * n + 12 * layers * seq * d


def quartiles(xs):
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def speed_table(args) -> str:
    """Speed from one process that steps every implementation in turn (paired, load-fair); compile time,
    first-step overhead and peak RSS from one subprocess per implementation (alternating order)."""
    peaks = [spawn("peak", args)]
    print(f"  peak: {peaks[0].get('gflops')}", file=sys.stderr)
    paired = spawn("paired", args, paired=args.impls)
    if "error" in paired:
        raise SystemExit(f"paired run failed:\n{paired['stderr']}")
    peaks.append(spawn("peak", args))
    peak = max(p["gflops"] for p in peaks if "gflops" in p)
    alone = {}
    if args.rss:
        for impl in (args.impls if args.rounds % 2 else args.impls[::-1]):
            alone[impl] = spawn(impl, args, steps=2, warmup=1)
            print(f"  alone {impl}: rss {alone[impl].get('rss_mb')}", file=sys.stderr)
    return format_speed(args, paired["times"], peak, paired["info"], paired["loss"], alone)


def format_speed(args, times: dict, peak: float | None, info: dict, loss: dict, alone: dict) -> str:
    fpt = flops_per_token(args.vocab, args.layers or MODEL["n_layers"], args.seq)
    tok = args.batch * args.seq
    med = {i: tok / statistics.median(t) for i, t in times.items()}
    impls = list(times)
    peers = [i for i in impls if not i.startswith("jaxlm") and i != "plain-jax"]
    ref = max(peers, key=lambda i: med[i]) if peers else impls[0]  # no peers (levers): vs the first
    peak_s = "not measured" if peak is None else f"**{peak:.0f} GFLOP/s**"
    vs = "fastest PyTorch" if peers else ref
    lines = [f"float32 matmul peak (jitted 4096^3 jnp.dot, best of the runs): {peak_s}; "
             f"model FLOPs/token = {fpt / 1e6:.1f} M; reference for the ratios: {ref}",
             "",
             f"| implementation | tokens/s median | IQR | best step | steps | MFU (median) | vs {vs} "
             "(paired median) | compile (jaxlm) / first-step overhead (torch) (s) | peak RSS alone (MB) | "
             "loss after run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for impl in impls:
        tps = [tok / t for t in times[impl]]
        lo, m, hi = quartiles(tps)
        ratio = f"{statistics.median(a / b for a, b in zip(times[ref], times[impl])):.2f}x"
        step = statistics.median(times[impl])
        inf = info.get(impl, {})
        if inf.get("compile_s") is not None:
            comp = f"{inf['compile_s']:.1f}"
        elif inf.get("first_s") is not None:
            comp = f"{inf['first_s'] - step:.1f}"
        else:
            comp = "-"
        rss = alone.get(impl, {}).get("rss_mb")
        rss_s = "-" if rss is None else f"{rss:,.0f}"
        mfu = "-" if peak is None else f"{m * fpt / (peak * 1e9):.1%}"
        lo_s = "-" if loss.get(impl) is None else f"{loss[impl]:.3f}"
        lines.append(f"| {impl} | {m:,.0f} | {lo:,.0f}–{hi:,.0f} | {max(tps):,.0f} | {len(tps)} | {mfu} | {ratio} | "
                     f"{comp} | {rss_s} | {lo_s} |")
    return "\n".join(lines)


def from_log(args) -> str:
    """Rebuild the speed table from a paired worker's progress log (``round i: impl 1.23s, ...`` lines), e.g.
    when the run was cut short: every complete round counts."""
    import re

    times: dict[str, list[float]] = {}
    for line in open(args.from_log):
        if line.startswith("round "):
            for impl, t in re.findall(r"(\S+) ([\d.]+)s(?:,|$)", line.split(":", 1)[1].strip()):
                times.setdefault(impl, []).append(float(t))
    n = min(len(t) for t in times.values())
    times = {i: t[:n] for i, t in times.items()}
    return format_speed(args, times, args.peak, {}, {}, {})


def depth_table(args) -> str:
    """Compile time (AOT lower + compile of the real step, no run) against depth; all scan runs first."""
    lines = ["| layers | scan: compile (s) | unrolled: compile (s) | scan: compiler peak RSS (MB) | "
             "unrolled: compiler peak RSS (MB) |", "|---:|---:|---:|---:|---:|"]
    cells = {}
    for scan in (True, False):
        for n in args.depths:
            res = spawn(f"jaxlm:scan_layers={str(scan).lower()}", args, layers=n, steps=0, warmup=1)
            cells[n, scan] = res
            print(f"  depth {n} scan={scan}: compile {res.get('compile_s')} s, rss {res.get('rss_mb')} MB "
                  f"{res.get('error', '')}", file=sys.stderr, flush=True)

    def c(r):
        return f"failed: {r['error']}" if "error" in r else f"{r['compile_s']:.1f}"

    def s(r):
        return "-" if "error" in r else f"{r['rss_mb']:,.0f}"

    for n in args.depths:
        t, u = cells[n, True], cells[n, False]
        lines.append(f"| {n} | {c(t)} | {c(u)} | {s(t)} | {s(u)} |")
    return "\n".join(lines)


def analysis_table(args) -> str:
    """XLA's compile-time view of each jaxlm variant's step (no timing: unaffected by machine load)."""
    lines = ["| variant | compile (s) | temp buffers (MB) | XLA flops (G) | XLA bytes accessed (GB) |",
             "|---|---:|---:|---:|---:|"]
    for impl in args.impls:
        res = spawn(impl, args, steps=0, warmup=1, layers=args.layers)
        a = res.get("analysis", {})
        print(f"  analysis {impl}: {a}", file=sys.stderr)
        if "error" in res or "temp_mb" not in a:
            lines.append(f"| {impl} | failed: {res.get('error', a.get('error'))} | | | |")
            continue
        lines.append(f"| {impl} | {res['compile_s']:.1f} | {a['temp_mb']:,.0f} | {a['gflop']:.0f} | "
                     f"{a['gb_accessed']:.1f} |")
    return "\n".join(lines)


def profile_table(args) -> str:
    """Where each jaxlm variant's step goes: XLA op time by kind (ms per step, both compute threads summed),
    one subprocess per variant, one after another."""
    res = {impl: spawn(impl, args, profile=True, layers=args.layers) for impl in args.impls
           if impl.startswith("jaxlm")}
    ok = {i: r["profile"] for i, r in res.items() if "profile" in r}
    lines = ["| XLA op kind (ms per step, CPU time over XLA's threads) | " + " | ".join(ok) + " |",
             "|---|" + "---:|" * len(ok)]
    for kind, _ in PROFILE_KINDS:
        lines.append(f"| {kind} | " + " | ".join(f"{p['kinds_ms'][kind]:,.0f}" for p in ok.values()) + " |")
    non = {i: sum(v for k, v in p["kinds_ms"].items() if not k.startswith("matmul")) for i, p in ok.items()}
    lines.append("| **all but matmul** | " + " | ".join(f"**{v:,.0f}**" for v in non.values()) + " |")
    lines.append("| wall time per step (ms) | " + " | ".join(f"{p['wall_ms']:,.0f}" for p in ok.values()) + " |")
    for i, r in res.items():
        if "profile" not in r:
            lines.append(f"\n{i}: failed: {r.get('error')}")
    return "\n".join(lines)


def _mb(v: float | None) -> str:
    return "failed" if v is None else f"{v:,.0f}"


def xent_memory_table(args) -> str:
    """Compiled temporary memory of the whole train step, plain vs fused cross-entropy, across vocab sizes,
    against the size of one float32 [tokens, vocab] logits array (XLA's memory analysis: no step is run)."""
    tok = args.batch * args.seq
    lines = ["| vocab | one f32 [tokens, vocab] array (MB) | plain: step temporaries (MB) | "
             "fused: step temporaries (MB) | fused / plain |", "|---:|---:|---:|---:|---:|"]
    for vocab in args.vocabs:
        a = argparse.Namespace(**{**vars(args), "vocab": vocab})
        temps = {}
        for impl in ("jaxlm", "jaxlm:xent=fused"):
            res = spawn(impl, a, steps=0, warmup=1, layers=args.layers)
            temps[impl] = res.get("analysis", {}).get("temp_mb")
            print(f"  xent memory vocab {vocab} {impl}: {temps[impl]} {res.get('error', '')}", file=sys.stderr)
        p, f = temps["jaxlm"], temps["jaxlm:xent=fused"]
        ratio = "-" if p is None or f is None else f"{f / p:.2f}"
        lines.append(f"| {vocab:,} | {tok * vocab * 4 / 2**20:,.0f} | {_mb(p)} | {_mb(f)} | {ratio} |")
    return "\n".join(lines)


def memory_table(args) -> str:
    lines = [f"| model ({args.memory_layers} layers) | remat | peak RSS (MB) | XLA temp buffers of the step (MB) | "
             "step (s) |",
             "|---|---|---:|---:|---:|"]
    for impl in args.impls:
        res = spawn(impl, args, layers=args.memory_layers, steps=2, warmup=1)
        print(f"  memory {impl}: {res.get('rss_mb')}", file=sys.stderr)
        ov = _overrides(impl)
        if "error" in res:
            lines.append(f"| {impl} | {ov.get('remat', '-')} | failed: {res['error']} | | |")
        else:
            temp = res.get("analysis", {}).get("temp_mb")
            lines.append(f"| {impl} | {ov.get('remat', 'auto' if impl.startswith('jaxlm') else '-')} | "
                         f"{res['rss_mb']:,.0f} | {'-' if temp is None else f'{temp:,.0f}'} | "
                         f"{statistics.median(res['times']):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impls", nargs="+", default=["jaxlm", "plain-jax", "hf", "torch", "torch-compile"])
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12, help="timed steps (rounds of the paired run)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="(per-implementation RSS runs: order flips if even)")
    ap.add_argument("--no-rss", dest="rss", action="store_false", help="skip the per-implementation RSS runs")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--depth", action="store_true", help="compile time vs depth (scan vs unrolled)")
    ap.add_argument("--depths", type=int, nargs="+", default=[6, 24, 48])
    ap.add_argument("--memory", action="store_true", help="peak RSS at --memory-layers for --impls")
    ap.add_argument("--memory-layers", type=int, default=24)
    ap.add_argument("--xent-memory", action="store_true",
                    help="compiled step temporaries, plain vs fused cross-entropy, at --vocabs")
    ap.add_argument("--vocabs", type=int, nargs="+", default=[50257, 131072, 262144])
    ap.add_argument("--analysis", action="store_true", help="XLA memory/cost analysis of jaxlm --impls")
    ap.add_argument("--profile", action="store_true",
                    help="jax.profiler trace of --steps steps of each jaxlm --impls: op time by kind")
    ap.add_argument("--timeout", type=int, default=1500, help="seconds per subprocess")
    ap.add_argument("--log", help="append the workers' progress (stderr) to this file")
    ap.add_argument("--from-log", help="rebuild the speed table from a paired run's --log file")
    ap.add_argument("--peak", type=float, help="with --from-log: the matmul peak (GFLOP/s) measured in that run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--paired", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    t0 = time.time()
    if args.from_log:
        table = from_log(args)
    elif args.depth:
        table = depth_table(args)
    elif args.memory:
        table = memory_table(args)
    elif args.analysis:
        table = analysis_table(args)
    elif args.xent_memory:
        table = xent_memory_table(args)
    elif args.profile:
        table = profile_table(args)
    else:
        table = speed_table(args)
    print(table)
    print(f"\n(command: python benchmarks/{Path(__file__).name} {' '.join(argv or sys.argv[1:])}; "
          f"{time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
