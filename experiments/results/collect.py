"""Summarise run directories into experiments/results/: a small JSON per run and its loss-curve PNG.

    python experiments/results/collect.py NAME=RUN_DIR [NAME=RUN_DIR ...] [--extra NAME=FILE.json ...]

For each run: steps done / planned, the last training loss, every evaluation (step, loss, accuracy), wall
time (config.json written at the start -> the last metrics line), parameter count, and whether the run
finished. ``--extra`` merges a task-metric JSON (BLEU, ROUGE, EM/F1) into the run's summary. Checkpoints are
never copied.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent


def summarise(name: str, run_dir: Path) -> dict:
    import jaxlm
    from jaxlm.models import family_of
    from jaxlm.train import config as C
    from jaxlm.train.loop import plot_losses

    run = C.load(run_dir / "config.json")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train_rows = [r for r in rows if "loss" in r]
    evals = [{k: r[k] for k in ("step", "eval_loss", "eval_nll", "eval_accuracy") if k in r}
             for r in rows if "eval_loss" in r]
    start = (run_dir / "config.json").stat().st_mtime
    end = (run_dir / "metrics.jsonl").stat().st_mtime
    step = max((r["step"] for r in rows), default=0)
    png = plot_losses(run_dir / "metrics.jsonl", OUT / f"{name}_loss.png")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    m = run.model
    return {
        "name": name, "run_dir": str(run_dir), "task": run.train.task, "family": type(m).family,
        "params": jaxlm.count(family_of(m).spec(m)),
        "model": {k: getattr(m, k) for k in ("n_layers", "d_model", "n_heads", "d_ff", "vocab_size", "max_len")},
        "steps_done": step, "steps_planned": run.train.steps, "finished": step >= run.train.steps,
        "batch_size": run.train.batch_size, "seq_len": run.data.seq_len,
        "last_train_loss": train_rows[-1]["loss"] if train_rows else None,
        "evals": evals, "wall_minutes": round((end - start) / 60, 1),
        "started_utc": dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "summarised_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"), "commit": commit,
        "loss_png": None if png is None else png.name,
    }


def main(argv: list[str]) -> int:
    extras = {}
    if "--extra" in argv:
        i = argv.index("--extra")
        for a in argv[i + 1:]:
            k, v = a.split("=", 1)
            extras.setdefault(k, []).append(json.loads(Path(v).read_text()))
        argv = argv[:i]
    for a in argv:
        name, d = a.split("=", 1)
        s = summarise(name, Path(d))
        for e in extras.get(name, []):
            s.setdefault("task_metrics", []).append({k: v for k, v in e.items() if "samples" not in k})
        (OUT / f"{name}.json").write_text(json.dumps(s, indent=1) + "\n")
        last = s["evals"][-1] if s["evals"] else {}
        print(f"{name}: step {s['steps_done']}/{s['steps_planned']}, {s['wall_minutes']} min, last eval {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
