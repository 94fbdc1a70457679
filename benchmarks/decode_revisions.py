"""Cached-decode speed of two revisions of jaxlm in the same run: did a change make generation slower?

Each revision is checked out into a temporary git worktree; a child process per (revision, round) imports
jaxlm from there, builds benchmarks/generate.py's GPT-2-shaped model (6 layers, 6 heads, d_model 384,
vocab 8192, random init, float32), compiles, then times greedy generation (prompt 32 -> 256 new tokens)
``--repeats`` times at batch 1 and 8. Rounds alternate between the revisions (base, head, base, head, ...)
so machine noise hits both alike; medians over all timed runs are compared. Compile time is excluded,
and so is the per-layer weight split (made once per process, as a caller that generates repeatedly does).

    python benchmarks/decode_revisions.py --base REV [--head WORKTREE_OR_REV] [--rounds 3] [--repeats 5]

Records the run (unless --no-write): its table replaces the ``decode_revisions.py`` section of benchmarks/RESULTS.md
and its full output is appended to benchmarks/HISTORY.md (benchmarks/_results.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from jaxlm.models import gpt2
import jaxlm.generate as G
cfg = gpt2.Config(vocab_size=8192, max_len=320, d_model=384, n_heads=6, n_layers=6, d_ff=1536, dropout=0.0,
                  attn_dropout=0.0)
params = gpt2.init(jax.random.key(0), cfg)
kw = {}
if hasattr(G, "kv_decode"):  # revisions that take the weight split as an argument
    kw["layers"] = G.kv_decode.split_layers(params, cfg)
out = {}
for B in (1, 8):
    prompts = np.random.default_rng(B).integers(1, cfg.vocab_size, (B, 32)).tolist()
    first = G.generate(params, cfg, prompts, max_new_tokens=256, greedy=True, **kw)  # compile
    times = []
    for _ in range(int(sys.argv[1])):
        t = time.perf_counter()
        o = G.generate(params, cfg, prompts, max_new_tokens=256, greedy=True, **kw)
        times.append(time.perf_counter() - t)
    out[B] = {"times": times, "tokens": o.tokens}
print(json.dumps(out))
"""


def worktree(rev: str, tmp: Path) -> Path:
    path = tmp / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev], check=True,
                   capture_output=True)
    return path


def child(tree: Path, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", CHILD, str(repeats)], cwd=tree, env=env, capture_output=True,
                       text=True, check=True)
    return {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--head", default=None, help="revision (default: this working tree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"base": worktree(args.base, Path(tmp)),
                 "head": REPO if args.head is None else worktree(args.head, Path(tmp))}
        try:
            runs: dict[str, dict[int, list[float]]] = {k: {1: [], 8: []} for k in trees}
            tokens: dict[str, dict] = {}
            for r in range(args.rounds):
                for name, tree in trees.items():
                    res = child(tree, args.repeats)
                    for B, v in res.items():
                        runs[name][B] += v["times"]
                    tokens[name] = {B: v["tokens"] for B, v in res.items()}
                    print(f"round {r + 1} {name}: " + ", ".join(
                        f"batch {B} {statistics.median(v['times']):.3f} s" for B, v in res.items()), flush=True)
        finally:
            for tree in trees.values():
                if tree != REPO:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                                   capture_output=True)
    head_rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    rows = []
    for B in (1, 8):
        b, h = statistics.median(runs["base"][B]), statistics.median(runs["head"][B])
        same = tokens["base"][B] == tokens["head"][B]
        rows.append(f"| {B} | {256 * B / b:.1f} | {256 * B / h:.1f} | {b / h:.3f}x | "
                    f"{min(runs['base'][B]) / min(runs['head'][B]):.3f}x | {'yes' if same else 'NO'} |")
    table = ("| batch | base tok/s | head tok/s | head speed / base (medians) | (best runs) | same greedy tokens |\n"
             "|---:|---:|---:|---:|---:|---|\n" + "\n".join(rows))
    sys.path.insert(0, str(HERE))
    from _results import machine, now, record  # benchmarks/_results.py

    cmd = f"python benchmarks/decode_revisions.py {' '.join(argv if argv is not None else sys.argv[1:])}".strip()
    run = (f"- base `{args.base}` vs head `{args.head or f'working tree at {head_rev}'}`, {args.rounds} alternating "
           f"rounds x {args.repeats} runs; {now()}; {machine()}; `{cmd}`")
    log = f"""benchmarks/generate.py's model (6 x 384, vocab 8192, float32), prompt 32 -> 256 new tokens, greedy.
Base `{args.base}` vs head `{args.head or f'working tree at {head_rev}'}`; {args.rounds} alternating rounds
of one process per revision, {args.repeats} timed runs each; compile time and the per-layer weight split
excluded. A ratio above 1 means the head decodes faster.

{table}

{run}
"""
    print(log)
    if not args.no_write:
        record("decode_revisions.py", f"{table}\n\n{run}", log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
