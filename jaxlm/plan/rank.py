"""The layout search (:func:`search`): every remat policy x gradient accumulation x (data, fsdp, tensor)
layout of a run on a topology (:func:`candidates`), ranked by the analytic estimate (fits first, then the
estimated step time, then fewer collectives), the best of them compiled."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

from jaxlm.config import ConfigError
from jaxlm.plan.analytic import estimate
from jaxlm.plan.compiler import compile_plan
from jaxlm.plan.report import Plan
from jaxlm.plan.topology import GiB, Topology, parse_topology
from jaxlm.train import config as C

REMATS = ("none", "dots_no_batch", "dots", "full")


def layouts(chips: int, cfg, batch_size: int) -> list[dict[str, int]]:
    """Every (data, fsdp, tensor) split of ``chips`` that the model and batch allow: tensor divides the
    heads (and is at most 8, one host's chips), data x fsdp divides the batch."""
    out = []
    for tensor in (1, 2, 4, 8):
        if chips % tensor or cfg.n_heads % tensor:
            continue
        rest = chips // tensor
        for fsdp in [d for d in range(1, rest + 1) if rest % d == 0]:
            data = rest // fsdp
            out.append({"data": data, "fsdp": fsdp, "tensor": tensor})
    return out


def candidates(run: C.RunConfig, topo: Topology, *, remats: Sequence[str] = REMATS,
               max_accum: int = 16) -> list[C.RunConfig]:
    """Every remat policy x gradient accumulation x mesh layout of ``run`` on ``topo`` whose micro-batch
    splits over the data-parallel devices."""
    B = run.train.batch_size
    cp = max(1, run.mesh.context)  # the context size the user chose is kept; the rest of the chips are split
    out = []
    for remat, accum in itertools.product(remats, [a for a in (1, 2, 4, 8, 16, 32) if a <= max_accum]):
        if B % accum:
            continue
        micro = B // accum
        for lay in layouts(topo.chips // cp, run.model, micro):
            if micro % (lay["data"] * lay["fsdp"]):
                continue
            out.append(run.replace(model=run.model.replace(remat=remat),
                                   train=dataclasses.replace(run.train, grad_accum=accum),
                                   mesh=dataclasses.replace(run.mesh, **lay, context=cp)))
    return out


def _rank_key(p: Plan) -> tuple:
    m = p.run.mesh
    # fastest estimate first; among equals fewer collectives (tensor, then fsdp) and fewer micro-batches
    return (not p.fits, round(p.step_seconds, 6), m.tensor, m.context, m.fsdp,
            p.run.train.grad_accum, p.total)


def search(run: C.RunConfig, topology: str | Topology, *, analytic: bool = False, compile_top: int = 3,
           utilisation: float = 0.5, say: Callable[[str], None] = lambda s: None) -> list[Plan]:
    """Rank every :func:`candidates` configuration by the analytic estimate (fits first, then estimated step
    time, then fewer collectives), then (unless ``analytic``) compile candidates in that order until
    ``compile_top`` of them fit by the compiler's count. Returns the ranked plans (compiled ones first)."""
    topo = topology if isinstance(topology, Topology) else parse_topology(topology)
    run = C.resolve(run)
    plans = []
    for cand in candidates(run, topo):
        try:
            plans.append(estimate(cand, topo, utilisation=utilisation))
        except ConfigError:
            continue
    plans.sort(key=_rank_key)
    if analytic:
        return plans
    compiled: list[Plan] = []
    for p in plans:
        if not p.fits and compiled:
            break
        say(f"compiling {p.mesh_str()} remat={p.run.model.remat} grad_accum={p.run.train.grad_accum} "
            f"(analytic {p.total / GiB:.2f} GiB) ...")
        c = compile_plan(p.run, topo, utilisation=utilisation)
        compiled.append(c)
        if sum(x.fits for x in compiled) >= compile_top or len(compiled) >= 3 * compile_top:
            break
    compiled.sort(key=_rank_key)
    return compiled + [p for p in plans if all(p.run != c.run for c in compiled)]
