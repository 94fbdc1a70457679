"""``jaxlm train EXPERIMENT.py [key=value ...] --run-dir DIR``: train a run, or resume it.

Rerunning the same command with an existing ``--run-dir`` resumes from its newest good checkpoint (exactly:
the same batches and random numbers as an uninterrupted run). SIGTERM / Ctrl-C save a checkpoint, wait
until it is written and stop; the message says which step is on disk. One process writes a run directory
at a time. Errors are one line on stderr, exit code 2 (bad settings, data or paths; a run directory in use)
or 1 (training failed: NaN loss, full disk).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from jaxlm.commands import Parser, run


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="jaxlm train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides are typed and checked, e.g. train.steps=200 train.lr=1e-3 train.batch_size=32 "
               "data.path=corpus.txt model.preset=gpt2-tiny model.n_layers=4 mesh.data=2.")
    p.add_argument("experiment", help="experiment file defining config() -> RunConfig")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--run-dir", required=True, help="where config, tokenizer, checkpoints and metrics go")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    g = p.add_argument_group("multi-process runs (not needed on TPU pods, SLURM or mpirun: detected)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (env JAXLM_COORDINATOR)")
    g.add_argument("--num-processes", type=int, help="processes in the job (env JAXLM_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, help="this process, 0..N-1 (env JAXLM_PROCESS_ID)")
    return p


def main(argv: list[str], *, hooks: Sequence[Any] = ()) -> int:
    """Run ``jaxlm train ARGV``; returns the exit status (130/143 when stopped by SIGINT/SIGTERM). ``hooks``
    are passed to :func:`jaxlm.train.loop.train` (for programs that wrap the command, e.g. tests)."""
    args = parser().parse_args(argv)
    # SyntaxError: in the experiment file, whose line it names
    return run("jaxlm train", lambda: _train(args, hooks), also=(SyntaxError,))


def _train(args: argparse.Namespace, hooks: Sequence[Any]) -> int:
    from jaxlm import distributed
    from jaxlm.train import config as C
    from jaxlm.train.loop import train

    distributed.initialize(distributed.Settings(args.coordinator, args.num_processes, args.process_id))
    run_cfg = C.apply_overrides(C.load_experiment(args.experiment), args.overrides)
    out = train(run_cfg, args.run_dir, quiet=args.quiet or not distributed.is_main(), hooks=hooks)
    if out["interrupted"]:
        return 130 if out["interrupted"] == "SIGINT" else 143
    ev = out["last_eval"] or {}
    loss = out["loss"]
    print(f"done: step {out['step']}" + (f", train loss {loss:.4f}" if loss is not None else "")
          + "".join(f", {k} {v:.4f}" for k, v in ev.items() if k in ("eval_loss", "eval_ppl", "eval_accuracy"))
          + f"; run directory {out['run_dir']}")
    return 0
