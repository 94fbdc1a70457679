"""``jaxlm eval RUN_DIR [--step N|best|latest]``: evaluate a run's checkpoint (the newest good one, or
``--step``; ``best`` = the one kept for the best ``train.best_metric``) on its evaluation data.

Prints loss, perplexity and accuracy (JSON with ``--json``). ``key=value`` overrides change the data or
batch settings (e.g. ``data.eval_path=other.txt train.eval_batches=50``); the model and tokenizer are the run's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxlm.commands import Parser, run
from jaxlm.config import ConfigError


def evaluate_run(run_dir: str, overrides: list[str] = (), step: int | str | None = None) -> dict:
    """Metrics (eval_loss, eval_nll, eval_ppl, eval_accuracy, eval_tokens) of a run's checkpoint on the
    run's evaluation split, plus the checkpoint ``step``."""
    import jax

    from jaxlm.data import pipeline
    from jaxlm.parallel import Parallel
    from jaxlm.pretrained import kind, load_run
    from jaxlm.train import config as C
    from jaxlm.train.hooks import evaluate
    from jaxlm.train.step import make_eval_step
    from jaxlm.train.tasks import make_task

    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; give the --run-dir of a jaxlm train run.")
    if (k := kind(run_dir)) != "run":  # kind() also names an empty or truncated config.json
        raise ConfigError(f"{run_dir} is not a jaxlm run directory (it holds a {k} checkpoint); jaxlm eval "
                          f"evaluates the runs of jaxlm train.")
    loaded = load_run(run_dir, step=step)
    run = C.apply_overrides(loaded.extra["run"], list(overrides))
    if run.model != loaded.config:
        raise ConfigError("jaxlm eval: model.* overrides are not allowed; the model is the run's.")
    prep = pipeline.prepare(run, run_dir)  # the run's tokenizer.json is reused
    if prep.eval is None:
        raise ConfigError("the run has no evaluation data (data.eval_fraction=0 and no data.eval_path); "
                          "set data.eval_path=FILE.")
    task = make_task(run.train.task, **pipeline.task_options(run, prep))
    par = Parallel({"data": 1, "fsdp": 1, "tensor": 1}, model_cfg=run.model, devices=jax.devices()[:1])
    fn = par.compile_eval(make_eval_step(task, run.model), loaded.params)
    out = evaluate(fn, loaded.params, prep.eval, run.train.batch_size, run.train.eval_batches, par)
    return {"step": loaded.extra["step"], **out}


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``jaxlm eval``."""
    from jaxlm.config import parse_step

    p = Parser(prog="jaxlm eval", description=__doc__)
    p.add_argument("run_dir", help="a jaxlm run directory")
    p.add_argument("overrides", nargs="*", help="key=value overrides of data.* / train.eval_batches etc.")
    p.add_argument("--step", type=parse_step, default=None,
                   help="checkpoint: a step number, 'best' (by train.best_metric) or 'latest' (default)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return run("jaxlm eval", lambda: _eval(args))


def _eval(args) -> int:
    out = evaluate_run(args.run_dir, args.overrides, args.step)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.run_dir} step {out['step']}: " + ", ".join(
            f"{k.removeprefix('eval_')} {v:.4f}" for k, v in out.items() if k != "step"))
    return 0
