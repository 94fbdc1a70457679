"""The compiled plan (:func:`compile_plan`): the train step compiled ahead of time for the topology, on
compile-only TPU devices (libtpu, run on this CPU; nothing is allocated) or ``cpu:N``'s simulated CPU
devices, and XLA's ``memory_analysis()`` read per device. A compile that runs out of memory is a plan that
does not fit, with the compiler's figure (:func:`oom_bytes`). :func:`plan` chooses compiled or analytic."""

from __future__ import annotations

import dataclasses
import re
import time

from jaxlm.plan.abstract import abstract_step, run_for
from jaxlm.plan.analytic import estimate
from jaxlm.plan.report import Plan
from jaxlm.plan.topology import Topology, devices, parse_topology
from jaxlm.train import config as C


def compile_plan(run: C.RunConfig, topo: Topology, *, utilisation: float = 0.5) -> Plan:
    """Compile the train step of ``run`` for ``topo`` ahead of time and read XLA's memory analysis (per
    device). A compile that fails for lack of memory is a Plan that does not fit, with the error."""
    run = run_for(run, topo)
    devs = devices(topo)
    c, state, batch = abstract_step(run, devs)
    base = estimate(run, topo, utilisation=utilisation)
    t0 = time.perf_counter()
    error = ""
    try:
        lowered = c.par.lower(c.step_fn, state, batch)
        mem = lowered.compile().memory_analysis()
    except Exception as e:  # noqa: BLE001 - the TPU compiler reports out-of-memory as XlaRuntimeError
        msg = str(e)
        if "RESOURCE_EXHAUSTED" not in msg and "memory" not in msg.lower():
            raise
        error = " ".join(msg.split())[:400]
        mem = None
    secs = time.perf_counter() - t0
    if mem is None:
        kind, need = oom_bytes(error)
        if kind == "temporaries":
            temps = need
        elif kind == "total":
            temps = need - base.params - base.opt_state - base.other
        else:  # the compiler named no size: the count stands in, and the error says so
            temps = base.temporaries
            error += " (the compiler named no size: temporaries are the analytic count)"
        return dataclasses.replace(base, source="compiled", temporaries=temps, error=error, compile_seconds=secs,
                                   analytic={**base.analytic})
    args = int(mem.argument_size_in_bytes)
    out_extra = max(0, int(mem.output_size_in_bytes) - int(mem.alias_size_in_bytes))
    state_bytes = base.params + base.opt_state
    return dataclasses.replace(
        base, source="compiled", temporaries=int(mem.temp_size_in_bytes),
        other=max(0, args - state_bytes) + out_extra, compile_seconds=secs, analytic={**base.analytic})


def oom_bytes(msg: str) -> tuple[str, int]:
    """What a compiler's out-of-memory message says the step needs per device: ``("temporaries", bytes)``
    from libtpu's "the total memory required for HLO temporaries (16.37G) exceeds available HBM (15.75G)",
    ``("total", bytes)`` from "Used 21.5G of 15.75G hbm", ``("", 0)`` when it names no size."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    for kind, pattern in (("temporaries", r"HLO temporaries \(([\d.]+)\s*([KMGT])"),
                          ("total", r"Used ([\d.]+)\s*([KMGT])i?B? of")):
        m = re.search(pattern, msg)
        if m:
            return kind, int(float(m.group(1)) * units[m.group(2)])
    return "", 0


def plan(run: C.RunConfig, topology: str | Topology, *, analytic: bool = False, utilisation: float = 0.5) -> Plan:
    """The :class:`Plan` of ``run`` on ``topology``: compiled (TPU compiler via libtpu, or XLA CPU for
    ``cpu:N``) unless ``analytic``. A TPU topology without libtpu raises ConfigError naming the fix."""
    topo = topology if isinstance(topology, Topology) else parse_topology(topology)
    if analytic:
        return estimate(run, topo, utilisation=utilisation)
    return compile_plan(run, topo, utilisation=utilisation)
