"""Where the metrics rows of a run go: ``RUN_DIR/metrics.jsonl``, TensorBoard, the progress bar, and the
loss plot. Each log is a hook (:mod:`jaxlm.train.hooks`) that records the rows it receives in ``on_log``.

Train rows (every ``train.log_every`` steps and the last): ``step``, ``loss``, ``nll``, ``ppl``,
``accuracy``, ``grad_norm``, ``tokens``, ``lr``, ``tokens_per_s`` and ``mfu``; eval rows: ``step`` and
``eval_*``. MFU (model FLOPs utilisation) = ``(6 N + 12 L T D) * tokens/s / (peak FLOP/s * devices)``
(:func:`jaxlm.metrics.flops_per_token`); the peak comes from ``train.peak_flops`` or a table by device
kind, so on CPU it is only an estimate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from jaxlm.fileio import write_text_atomic
from jaxlm.train.hooks import Hook, Loop

METRICS_FILE = "metrics.jsonl"


def read_rows(path: Path) -> list[dict]:
    """The rows of a metrics file; a line that is not a JSON object (the end of a write cut short by a
    kill or a full disk) is skipped."""
    rows = []
    for ln in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(ln)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def truncate_metrics(path: Path, upto: int) -> None:
    """Keep only the rows of steps <= ``upto`` (a resumed run rewrites what came after), dropping any
    partial line; rewritten atomically, so a kill here leaves the old file."""
    if not path.exists():
        return
    keep = [r for r in read_rows(path) if isinstance(r.get("step", 0), int) and r.get("step", 0) <= upto]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))


class MetricsFile(Hook):
    """Appends every row to ``path`` as one JSON object per line. A fresh run starts the file anew; a
    resumed run keeps the lines up to the step it resumes from."""

    def __init__(self, path: Path):
        self.path = path

    def on_start(self, loop: Loop) -> None:
        if loop.setup.resumed_from is not None:
            truncate_metrics(self.path, loop.setup.start)
        elif self.path.exists():
            self.path.unlink()

    def on_log(self, loop: Loop, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class TensorBoard(Hook):
    """Writes the finite float metrics of every row as scalars (``train/loss``, ``eval/loss``, ...) to a
    TensorBoard event file in ``logdir``."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.writer = None

    def on_start(self, loop: Loop) -> None:
        from tensorboardX import SummaryWriter  # optional dependency, only when TensorBoard logging is on

        self.writer = SummaryWriter(str(self.logdir))

    def on_log(self, loop: Loop, row: dict) -> None:
        for k, v in row.items():
            if k != "step" and isinstance(v, float) and math.isfinite(v):
                tag = ("eval/" if k.startswith("eval_") else "train/") + k.removeprefix("eval_")
                self.writer.add_scalar(tag, v, row["step"])

    def on_end(self, loop: Loop) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar(Hook):
    """A tqdm bar over the run's steps showing the last train loss and tokens/s."""

    def __init__(self) -> None:
        self.bar = None

    def on_start(self, loop: Loop) -> None:
        from tqdm.auto import tqdm  # imported only for runs that show a bar

        self.bar = tqdm(total=loop.setup.run.train.steps, initial=loop.step, desc="train", unit="step",
                        dynamic_ncols=True)

    def on_step(self, loop: Loop) -> None:
        self.bar.update(1)

    def on_log(self, loop: Loop, row: dict) -> None:
        if "loss" in row:
            post = {"loss": f"{row['loss']:.4f}"}
            if "tokens_per_s" in row:
                post["tok/s"] = f"{row['tokens_per_s']:.0f}"
            self.bar.set_postfix(post, refresh=False)

    def on_end(self, loop: Loop) -> None:
        if self.bar is not None:
            self.bar.close()


def plot_losses(metrics_file: Path, out: Path) -> Path | None:
    """Train (and eval) loss against step as a PNG; None when there is nothing to plot."""
    if not metrics_file.exists():
        return None
    rows = read_rows(metrics_file)
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    ev = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not tr and not ev:
        return None
    import matplotlib  # optional dependency, only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if tr:
        ax.plot(*zip(*tr), label="train loss")
    if ev:
        ax.plot(*zip(*ev), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
