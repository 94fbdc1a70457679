"""Cost of the in-jit token-id check on the compiled train step.

The train step counts token ids outside ``[0, vocab_size)`` (``metrics["bad_ids"]``, see
``jaxlm/train/step.py``) and the embedding looks ids up with ``mode="fill"`` after sending negative ids past
the table (``jaxlm/nn/embed.py``), so that under jit a bad id is counted and reported instead of giving NaN
logits or wrapping to the last row. This script times the compiled step with that check against the step
without it (``check_ids=False`` and the plain ``jnp.take`` lookup used before), in the same process, the two
interleaved (A B B A A B ...) so that machine load hits both alike; it reports medians of the per-step times
and the median of the per-round ratios.

    python benchmarks/validation_cost.py                       # GPT-2 6 x 384, vocab 8192, seq 256, batch 8
    python benchmarks/validation_cost.py --preset tiny         # a gpt2-tiny-sized step (ms per step)
    python benchmarks/validation_cost.py --write               # also record it (below)

With ``--write`` (or its old name ``--append``) the run is recorded: its row replaces the preset's section
(``validation_cost.py:bench`` / ``validation_cost.py:tiny``) of benchmarks/RESULTS.md and its full output is appended
to benchmarks/HISTORY.md (benchmarks/_results.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import sharding
from jaxlm.models import gpt2
from jaxlm.nn import embed
from jaxlm.train import config as C
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import create_state
from jaxlm.train.step import make_train_step
from jaxlm.train.tasks import make_task

HERE = Path(__file__).resolve().parent
SHAPES = {  # the training benchmark's model (benchmarks/train.py) and a gpt2-tiny-sized one
    "bench": dict(vocab_size=8192, d_model=384, n_heads=6, n_layers=6, d_ff=1536, seq=256, batch=8),
    "tiny": dict(vocab_size=512, d_model=64, n_heads=4, n_layers=2, d_ff=256, seq=128, batch=16),
}


def _unchecked_apply(p: dict, tokens, dtype=jnp.float32, scale=None):
    """The lookup before the check: ``jnp.take``'s default mode (NaN rows, negative ids wrap)."""
    x = jnp.take(sharding.gathered(p["tokens"], embed.TOKENS_AXES), tokens, axis=0).astype(dtype)
    return x * scale if scale is not None else x


@contextlib.contextmanager
def _unchecked_lookup():
    old = embed.apply
    embed.apply = _unchecked_apply
    try:
        yield
    finally:
        embed.apply = old


def _compile(cfg, opt, checked: bool, state, batch):
    """The jitted step (state donated, as in training), compiled for ``state`` and ``batch``; seconds taken."""
    step = make_train_step(make_task("causal_lm"), cfg, opt, check_ids=checked)
    with contextlib.nullcontext() if checked else _unchecked_lookup():
        t0 = time.perf_counter()
        compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
        return compiled, time.perf_counter() - t0


def _flops(compiled) -> float:
    """XLA's cost-model FLOP count of a compiled program (load-independent, unlike the timings)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(SHAPES), default="bench")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    ap.add_argument("--write", "--append", dest="write", action="store_true",
                    help="record the run: the preset's table in RESULTS.md, the full output appended to HISTORY.md")
    args = ap.parse_args(argv)
    s = dict(SHAPES[args.preset])
    seq, B = s.pop("seq"), s.pop("batch")
    cfg = gpt2.Config(max_len=seq, dropout=0.0, attn_dropout=0.0, **s)
    rng = np.random.default_rng(0)
    toks = rng.integers(0, cfg.vocab_size, (B, seq + 1), dtype=np.int32)
    batch = {"inputs": jnp.asarray(toks[:, :-1]), "targets": jnp.asarray(toks[:, 1:]),
             "weights": jnp.ones((B, seq), jnp.float32)}

    opt = make_optimizer(C.TrainConfig(lr=3e-4, weight_decay=0.01, clip_norm=None, warmup_steps=0), cfg)
    variants = {}
    for name, checked in (("with check", True), ("without check", False)):
        state = create_state(0, cfg, opt)
        compiled, secs = _compile(cfg, opt, checked, state, batch)
        print(f"compiled {name} in {secs:.1f} s", file=sys.stderr, flush=True)
        variants[name] = {"step": compiled, "state": state, "compile_s": secs, "times": [], "loss": None,
                          "flops": _flops(compiled)}
    # the check is really there: a bad id in the batch is counted by the checked step only
    bad = dict(batch, inputs=batch["inputs"].at[0, 0].set(-1))
    probe = variants["with check"]
    probe["state"], m = probe["step"](probe["state"], bad)
    assert int(m["bad_ids"]) == 1, m
    jax.block_until_ready(m)

    order = list(variants)
    round_ratios = []
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    for r in range(args.rounds + 1):  # round 0 warms both variants up and is not counted
        per_round = {}
        for name in (order if r % 2 else order[::-1]):
            v = variants[name]
            times = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                v["state"], m = v["step"](v["state"], batch)
                jax.block_until_ready(m)
                times.append(time.perf_counter() - t0)
            v["loss"] = float(m["loss"])
            if r:
                v["times"] += times
                per_round[name] = statistics.median(times)
        if r:
            round_ratios.append(per_round["with check"] / per_round["without check"])
            print(f"round {r}: " + ", ".join(f"{n} {t * 1e3:.1f} ms" for n, t in per_round.items())
                  + f", ratio {round_ratios[-1]:.4f}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t_start
    load1 = os.getloadavg()

    med = {n: statistics.median(v["times"]) for n, v in variants.items()}
    ratio = med["with check"] / med["without check"]
    paired = statistics.median(round_ratios)
    cmd = "python benchmarks/validation_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    lines = [
        f"### {args.preset}: GPT-2 {cfg.n_layers} x {cfg.d_model}, vocab {cfg.vocab_size}, seq {seq}, batch {B} "
        f"({now})",
        "",
        "| variant | median step (ms) | min (ms) | max (ms) | steps | compile (s) | XLA cost-model GFLOP | loss after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, v in variants.items():
        lines.append(f"| {n} | {med[n] * 1e3:.2f} | {min(v['times']) * 1e3:.2f} | {max(v['times']) * 1e3:.2f} | "
                     f"{len(v['times'])} | {v['compile_s']:.1f} | {v['flops'] / 1e9:.4f} | {v['loss']:.4f} |")
    lines += [
        "",
        f"- with / without (medians of all steps): **{ratio:.4f}** ({(ratio - 1) * 100:+.2f} %); median of the "
        f"{len(round_ratios)} per-round ratios: **{paired:.4f}** ({(paired - 1) * 100:+.2f} %); per-round "
        f"ratios: {', '.join(f'{x:.3f}' for x in round_ratios)}; XLA cost-model FLOPs with / without: "
        f"{variants['with check']['flops'] / variants['without check']['flops']:.6f}",
        f"- machine: {cpu}, {os.cpu_count()} cores visible, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}; load average {load0[0]:.1f} before, {load1[0]:.1f} after; "
        f"timed part {wall:.0f} s",
        f"- command: `{cmd.strip()}`",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        sys.path.insert(0, str(HERE))
        from _results import record  # benchmarks/_results.py

        flops = variants["with check"]["flops"] / variants["without check"]["flops"]
        row = (f"| {args.preset}: GPT-2 {cfg.n_layers} x {cfg.d_model}, vocab {cfg.vocab_size}, seq {seq}, batch {B} | "
               f"{ratio:.4f} ({(ratio - 1) * 100:+.2f} %) | {paired:.4f} ({(paired - 1) * 100:+.2f} %) | {flops:.6f} | "
               f"{cpu}, {os.cpu_count()} cores, load {load0[0]:.1f} -> {load1[0]:.1f} | {now} | `{cmd.strip()}` |")
        table = ("| preset | with / without (medians) | median of per-round ratios | XLA cost-model FLOPs with / without "
                 "| machine | date | command |\n|---|---:|---:|---:|---|---|---|\n" + row)
        record(f"validation_cost.py:{args.preset}", table, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
