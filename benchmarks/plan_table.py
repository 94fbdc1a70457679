"""The `jaxlm plan` table of benchmarks/RESULTS.md: for each preset and TPU slice, the cheapest remat / mesh /
gradient accumulation that fits (ranked by the analytic estimate, confirmed by the TPU compiler via libtpu)
with the compiler's per-chip memory and the ESTIMATED tokens/s. Compiler estimates, not measurements.

    python benchmarks/plan_table.py [--rows gpt2-124m:v5e-16,...] [--out benchmarks/plan_table.md]
    python benchmarks/plan_table.py --every-preset [--topology v5e-16]   # how long `jaxlm plan` takes, per preset

Each row runs `jaxlm plan PRESET --topology T --search --top 1 ...` in its own process (so one slow or
failing compile costs one row) and appends its line to the output as soon as it is done.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEQ = {"gpt2-124m": 1024, "gpt2-355m": 1024, "gpt2-774m": 1024, "gpt2-1.5b": 1024, "llama2-7b": 4096,
       "llama3.1-8b": 4096, "mixtral-8x7b": 4096, "gpt3-175b": 2048}
PRESETS = ("gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1.5b", "llama2-7b", "llama3.1-8b", "mixtral-8x7b",
           "gpt3-175b")
TOPOLOGIES = ("v5e-16", "v5p-128", "v5e-256")
CHIPS = {"v5e-16": 16, "v5p-128": 64, "v5e-256": 256}


def command(preset: str, topo: str, extra: list[str]) -> list[str]:
    # global batch: 4 sequences per chip, bfloat16 compute, float32 params and Adam moments (jaxlm's default)
    batch = 4 * CHIPS[topo]
    return ["jaxlm", "plan", preset, "--topology", topo, "--search", "--top", "1", f"train.batch_size={batch}",
            f"data.seq_len={SEQ[preset]}", "model.dtype=bfloat16", *extra]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="", help="PRESET:TOPOLOGY,... (default: every preset x topology)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "plan_table.md"))
    ap.add_argument("--timeout", type=int, default=1500)
    ap.add_argument("--analytic", action="store_true", help="analytic search only, in this process (fast)")
    ap.add_argument("--every-preset", action="store_true",
                    help="time one compiled `jaxlm plan PRESET --topology T` (FSDP over the slice, bfloat16) "
                         "for every preset of the zoo")
    ap.add_argument("--topology", default="v5e-16", help="--every-preset: the slice")
    args = ap.parse_args()
    if args.every_preset:
        return every_preset(args.topology, args.timeout)
    rows = [tuple(r.split(":", 1)) for r in args.rows.split(",") if r] or [(p, t) for t in TOPOLOGIES
                                                                            for p in PRESETS]
    out = Path(args.out)
    if args.analytic:
        return analytic(rows, out)
    for preset, topo in rows:
        cmd = command(preset, topo, [])
        env = dict(os.environ, PYTHONPATH=str(REPO))
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, "-m", "jaxlm.cli", *cmd[1:]], capture_output=True, text=True,
                                  env=env, timeout=args.timeout, cwd=REPO)
            text = proc.stdout
        except subprocess.TimeoutExpired:
            text = ""
        secs = time.time() - t0
        m = re.search(r"^\s+1\s+(.+?)\s{2,}(\S+)\s+(\d+)\s+([\d.]+)\s+(\w+)\s+([\d.,]+)\s+([\d,]+)$", text, re.M)
        shown = " ".join(cmd)
        if m and m.group(5) == "compiled":
            mesh, remat, accum, gib, _, ms, tps = m.groups()
            line = (f"| {preset} | {topo} | {mesh} | {remat} | {accum} | {gib} | {tps} | `{shown}` |")
        elif m:
            line = f"| {preset} | {topo} | {m.group(1)} | {m.group(2)} | {m.group(3)} | (analytic {m.group(4)}) | " \
                   f"{m.group(7)} | `{shown}` |"
        else:
            last = (text.strip().splitlines() or ["timed out / failed"])[-1][:120]
            line = f"| {preset} | {topo} | - | - | - | - | - | `{shown}` ({last}) |"
        with out.open("a") as f:
            f.write(line + f" <!-- {secs:.0f}s -->\n")
        print(line, f"({secs:.0f}s)", flush=True)


def every_preset(topo: str, timeout: int) -> None:
    """One compiled plan per preset (its family's task, its full context, one sequence per chip, FSDP over
    the slice, bfloat16 compute): the verdict, the compiler's GiB per chip and how long the answer took."""
    from jaxlm.models import REGISTRY
    from jaxlm.plan import parse_topology

    chips = parse_topology(topo).chips
    print("| preset | GiB / chip (TPU compiler) | verdict | seconds | command |\n|---|---:|---|---:|---|")
    for preset in REGISTRY:
        cmd = ["jaxlm", "plan", preset, "--topology", topo, f"train.batch_size={chips}", "mesh.data=1",
               f"mesh.fsdp={chips}", "model.dtype=bfloat16"]
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, "-m", "jaxlm.cli", *cmd[1:]], capture_output=True, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=timeout, cwd=REPO)
            text = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired:
            text = f"timed out after {timeout} s"
        secs = time.time() - t0
        total = re.search(r"^\s+total\s+([\d.]+) (GiB|MiB)\s.*?: (FITS|DOES NOT FIT)", text, re.M)
        if total:
            gib = float(total.group(1)) / (1024 if total.group(2) == "MiB" else 1)
            shown = f"{gib:.2f} | {total.group(3).lower()}"
        else:
            shown = f"- | {(text.strip().splitlines() or ['failed'])[-1][:100]}"
        print(f"| {preset} | {shown} | {secs:.0f} | `{' '.join(cmd)}` |", flush=True)


def analytic(rows, out: Path) -> None:
    """The same rows from `jaxlm plan ... --search --analytic` (no compiler): labelled analytic."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from jaxlm import plan as PL
    from jaxlm.train import config as C

    for preset, topo in rows:
        cmd = command(preset, topo, ["--analytic"])
        t0 = time.time()
        over = dict(a.split("=", 1) for a in cmd if "=" in a)
        run = C.apply_overrides(C.RunConfig(model=preset), over)
        plans = PL.search(run, topo, analytic=True)
        fits = [p for p in plans if p.fits]
        if fits:
            p = fits[0]
            line = (f"| {preset} | {topo} | {p.mesh_str()} | {p.run.model.remat} | {p.run.train.grad_accum} | "
                    f"{p.total / PL.GiB:.2f} (analytic) | {p.tokens_per_second:,.0f} | `{' '.join(cmd)}` |")
        else:
            best = min(plans, key=lambda p: p.total)
            line = (f"| {preset} | {topo} | nothing fits (smallest: {best.mesh_str()}, {best.run.model.remat}) | | | "
                    f"{best.total / PL.GiB:.2f} (analytic) | - | `{' '.join(cmd)}` |")
        with out.open("a") as f:
            f.write(line + "\n")
        print(line, f"({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
