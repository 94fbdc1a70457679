"""``jaxlm plan EXPERIMENT.py|PRESET [key=value ...] --topology v5e-16``: will this run fit on a TPU slice,
and how fast will it go? Answered on any machine.

Builds the train step ``jaxlm train`` would run (same task, optimizer, dtypes, remat, mesh, shardings),
compiles it ahead of time for the topology with abstract inputs (nothing is allocated; TPU topologies need
the ``libtpu`` package, ``pip install "jax[tpu]"``, but no TPU) and prints per device: parameter,
optimizer-state, temporary and total bytes against the chip's HBM, whether it fits, the model's FLOPs per
step and the step time / tokens per second they imply at an assumed utilisation (an ESTIMATE).

``--analytic`` skips the compiler (an estimate from the parameter spec: exact state bytes, counted
activations). ``--search`` tries remat policies x gradient accumulation x (data, fsdp, tensor) layouts and
prints the ranked options that fit. Topologies: v5e-16, v5e:4x4, v5e-256, v5p-128 (= 64 chips: v4/v5p names
count TensorCores), v4-32, v6e-64, cpu:8 (8 simulated CPU devices: XLA's CPU compiler).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from jaxlm.commands import Parser, run


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="jaxlm plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="Examples: jaxlm plan llama2-7b --topology v5e-16 mesh.fsdp=16 train.batch_size=16 "
                      "data.seq_len=2048 model.remat=full model.dtype=bfloat16 ;  jaxlm plan gpt2-124m "
                      "--topology v5e-16 --search")
    p.add_argument("experiment", help="experiment file defining config() -> RunConfig, or a preset name "
                                      "(see `jaxlm models`)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (train.batch_size=, mesh.fsdp=, ...)")
    p.add_argument("--topology", required=True, help="v5e-16 | v5e:4x4 | v5e-256 | v5p-128 | v4-32 | v6e-64 | "
                                                    "cpu:8")
    p.add_argument("--analytic", action="store_true", help="analytic estimate only (no compiler, no libtpu)")
    p.add_argument("--search", action="store_true", help="rank remat x grad_accum x mesh layouts that fit")
    p.add_argument("--top", type=int, default=3, help="--search: how many fitting options to compile/show")
    p.add_argument("--utilisation", type=float, default=0.5,
                   help="assumed hardware-FLOPs utilisation for the step-time estimate (default 0.5)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_intermixed_args(argv)  # overrides may come before or after --topology
    return run("jaxlm plan", lambda: _plan(args), also=(SyntaxError,))


def _start_jax(topology: str) -> None:
    """Before jax starts: ``cpu:N`` needs N host devices; TPU topologies compile on the CPU host (no TPU),
    with libtpu shared with other processes when no TPU is attached."""
    if "jax" in sys.modules and getattr(sys.modules["jax"], "_src", None) is not None:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return
    t = topology.strip().lower()
    if t.startswith("cpu"):
        n = t.partition(":")[2] or "8"
        flag = f"--xla_force_host_platform_device_count={n}"
        if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # libtpu looks for TPU hardware and warns at length when there is none; compile-only needs none
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "")
    # without a TPU, let this planner load libtpu beside other processes (another planner, a run that
    # loaded it): set before anything in this process can load libtpu, not only before the compile
    from jaxlm.plan.topology import share_libtpu

    share_libtpu()


def _plan(args: argparse.Namespace) -> int:
    _start_jax(args.topology)
    from pathlib import Path

    from jaxlm import plan as PL
    from jaxlm.config import ConfigError
    from jaxlm.train import config as C

    if not 0 < args.utilisation <= 1:
        raise ConfigError(f"--utilisation={args.utilisation} must be in (0, 1] (e.g. 0.5).")
    topo = PL.parse_topology(args.topology)
    if topo.kind != "cpu" and not args.analytic and not PL.has_libtpu():
        raise ConfigError(f"topology {topo.name} needs the TPU compiler, which is not installed: {PL.LIBTPU_FIX}.")
    src = args.experiment
    if src.endswith(".py") or ":" in src or Path(src).is_file():
        run_cfg = C.load_experiment(src)
    else:
        run_cfg = C.RunConfig(model=C._preset(src))
        keys = {o.partition("=")[0].strip() for o in args.overrides}
        if "data.seq_len" not in keys:  # a preset alone: its full context
            run_cfg = run_cfg.replace(data=run_cfg.data.__class__(seq_len=run_cfg.model.max_len))
        if "train.task" not in keys:  # ... and the task its family pretrains with (the first of its TASKS)
            from jaxlm.models import family_of

            run_cfg = run_cfg.replace(train=dataclasses.replace(run_cfg.train,
                                                                task=family_of(run_cfg.model).TASKS[0]))
    run_cfg = C.apply_overrides(run_cfg, args.overrides)
    if not args.search:
        p = PL.plan(run_cfg, topo, analytic=args.analytic, utilisation=args.utilisation)
        print(p.summary())
        return 0
    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    plans = PL.search(run_cfg, topo, analytic=args.analytic, compile_top=args.top, utilisation=args.utilisation,
                      say=say)
    fits = [p for p in plans if p.fits]
    print(f"{len(plans)} configurations tried on {topo.name} ({topo.chips} chips); {len(fits)} fit"
          + ("" if args.analytic else f" (compiled: {sum(p.source == 'compiled' for p in plans)})")
          + f". Step time / tokens/s are ESTIMATES at {args.utilisation:.0%} hardware-FLOPs utilisation.")
    print(f"{'rank':>4}  {'mesh':<26} {'remat':<14} {'accum':>5} {'GiB/chip':>9} {'source':<9} {'ms/step':>9} "
          f"{'tokens/s':>11}")
    for i, p in enumerate(fits[:max(args.top, 1) * 3], 1):
        print(f"{i:>4}  {p.mesh_str():<26} {p.run.model.remat:<14} {p.run.train.grad_accum:>5} "
              f"{p.total / PL.GiB:>9.2f} {p.source:<9} {p.step_seconds * 1e3:>9.1f} {p.tokens_per_second:>11,.0f}")
    if not fits:
        best = min(plans, key=lambda p: p.total)
        print(f"nothing fits: the smallest option needs {best.total / PL.GiB:.2f} GiB per chip "
              f"({best.mesh_str()}, remat={best.run.model.remat}, grad_accum={best.run.train.grad_accum}) of "
              f"{best.capacity / PL.GiB:.2f} GiB; use a bigger slice, a smaller batch or bfloat16 params.")
        return 1
    print("\nbest:\n" + fits[0].summary())
    return 0
