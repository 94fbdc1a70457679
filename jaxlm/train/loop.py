"""The training loop (DESIGN.md §6): :func:`train` = :func:`jaxlm.train.setup.setup` (data, compiled steps,
checkpointer, first state), then :func:`run_steps` (the updates) with hooks around each step
(:mod:`jaxlm.train.hooks`: evaluation, checkpointing and signals; :mod:`jaxlm.train.logs`: metrics.jsonl,
TensorBoard, progress bar).

The step is compiled in one place, :meth:`jaxlm.train.setup.Compiled.train_step`, through
:class:`jaxlm.parallel.Parallel` (``jax.jit`` with shardings and the state donated on a
``(data, fsdp, tensor)`` mesh, or ``jax.pmap``), so ``mesh.*`` overrides change the parallelism and nothing
else.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from jaxlm.train import config as C
from jaxlm.train.hooks import Checkpointing, Evaluation, Hook, Loop, TrainingError, evaluate
from jaxlm.train.logs import METRICS_FILE, MetricsFile, ProgressBar, TensorBoard, plot_losses
from jaxlm.train.preflight import check_run_dir
from jaxlm.train.setup import Setup, StepCache, merge_params, run_params, setup

__all__ = ["Hook", "Loop", "StepCache", "TrainingError", "check_run_dir", "evaluate", "log_hooks",
           "merge_params", "plot_losses", "run_params", "run_steps", "train", "update"]


def log_hooks(s: Setup) -> list[Hook]:
    """The logs a run asks for: metrics.jsonl and TensorBoard (process 0 only), the progress bar."""
    t = s.run.train
    hooks: list[Hook] = []
    if s.main:
        hooks.append(MetricsFile(s.run_dir / METRICS_FILE))
        if t.tensorboard:
            hooks.append(TensorBoard(s.run_dir / "tb"))
        if t.wandb.project:
            from jaxlm.train.wandb_log import WandbLog

            hooks.append(WandbLog(t.wandb))
    if t.progress and not s.quiet:
        hooks.append(ProgressBar())
    return hooks


def update(loop: Loop) -> None:
    """One optimizer update: batch ``loop.step`` of the training data, in ``train.grad_accum``
    micro-batches through the compiled step; its metrics are queued on ``loop``."""
    s, t = loop.setup, loop.setup.run.train
    step_fn = s.compiled.train_step(loop.state)
    micro = t.batch_size // t.grad_accum
    batch = s.prep.train.batch(loop.step, t.batch_size)
    # a data stream hands each process only its own rows (jaxlm.data.stream); arrays hold the global batch
    local = getattr(s.prep.train, "local_rows", False)
    rows = micro // jax.process_count() if local else micro
    metrics = []
    for j in range(t.grad_accum):
        mb = {k: v[j * rows:(j + 1) * rows] for k, v in batch.items()}
        loop.state, m = step_fn(loop.state, s.par.place_batch(mb, global_rows=micro if local else None))
        metrics.append(m)
    loop.step += 1
    loop.eval = {}
    loop.record(metrics)


def run_steps(loop: Loop) -> None:
    """``on_start``; then an :func:`update` and ``on_step`` per step until ``train.steps`` updates are done
    or a hook sets ``loop.stop``; a last flush of the metrics; ``on_end`` (always, in reverse order)."""
    try:
        loop.emit("on_start")
        while loop.step < loop.setup.run.train.steps and not loop.stop:
            update(loop)
            loop.emit("on_step")
        loop.flush()
        loop.finished = True
    finally:
        for h in reversed(loop.hooks):
            if (on_end := getattr(h, "on_end", None)) is not None:
                on_end(loop)


def train(run: C.RunConfig, run_dir: str | Path, *, quiet: bool = False, hooks: Sequence[Any] = (),
          cache: StepCache | None = None) -> dict:
    """Train (or resume) ``run`` in ``run_dir``; returns a summary dict: ``step``, ``loss`` (last logged),
    ``last_eval`` (dict), ``first_eval`` (eval before training, fresh runs only), ``interrupted`` (None
    or the signal name), ``resumed_from`` (step or None), ``initialised_from`` ({"run", "step"} of
    ``train.init_from``, fresh runs only, else None), ``run_dir``, ``info`` (data facts), ``plot`` (the
    loss plot's path or None) and ``last_checkpoint``.

    ``hooks``: extra hooks (:mod:`jaxlm.train.hooks`), run after the logs and before evaluation and
    checkpointing. ``cache``: a :class:`StepCache` kept across calls so that training the same step
    configuration again reuses its compiled steps (None = compile afresh).
    """
    s, state = setup(run, run_dir, quiet=quiet, cache=cache)
    try:  # the run directory stays locked until its last file is written
        try:
            loop = Loop(s, state, [*log_hooks(s), *hooks, Evaluation(), Checkpointing()])
            run_steps(loop)
        finally:
            s.ckpt.close()  # waits for pending saves
        png = None
        if s.run.train.plot and s.main:
            png = plot_losses(s.run_dir / METRICS_FILE, s.run_dir / "loss.png")
    finally:
        if s.lock is not None:
            s.lock.release()
    return {"step": loop.step, "loss": loop.last.get("loss"), "last_eval": loop.last_eval,
            "first_eval": loop.first_eval, "interrupted": loop.interrupted, "resumed_from": s.resumed_from,
            "initialised_from": s.initialised_from, "run_dir": str(s.run_dir), "info": s.prep.info,
            "plot": None if png is None else str(png), "last_checkpoint": loop.last_checkpoint}
