"""Will it fit, and how fast will it go? Per-device memory and step time of a run on a TPU slice, from any
machine (``jaxlm plan``).

:func:`plan` builds the train step ``jaxlm train`` would run for a :class:`~jaxlm.train.config.RunConfig`
(same task, optimizer, dtypes, remat policy, mesh and shardings: :func:`jaxlm.train.setup.build`) and
either

- **compiles** it ahead of time for a topology (``jax.jit(step).lower(abstract state, abstract batch)
  .compile()`` on the devices of :func:`jax.experimental.topologies.get_topology_desc`: the real TPU
  compiler, run on this CPU by the ``libtpu`` package; nothing is allocated) and reads XLA's
  ``memory_analysis()``, or
- **estimates** it analytically (:func:`estimate`): the state's bytes exactly from the parameter spec and
  the shardings, activations from a per-remat-policy count of the tensors the backward pass keeps.

The compiled ``cpu:N`` path (N simulated CPU devices) runs the same code with XLA's CPU compiler, which is
how the tests check the analytic estimate.

FLOPs come from the model (:func:`jaxlm.metrics.flops_per_token`: 6 N + 12 L T D per token, plus the
forward pass recomputed by rematerialisation), not from ``cost_analysis()``, which counts a scanned layer
once. Step time and tokens/s are ESTIMATES at an assumed hardware-FLOPs utilisation, not measurements.

The modules, bottom up: ``topology`` (chips, slices, their devices), ``abstract`` (the run resolved for a
slice; its state and batch as abstract values), ``report`` (the :class:`Plan` and its printed report),
``activations`` (the activation count), ``analytic`` (the analytic estimate and FLOPs), ``compiler`` (the
compiled plan), ``rank`` (the layout search).
"""

from jaxlm.plan.abstract import abstract_batch
from jaxlm.plan.activations import activation_bytes
from jaxlm.plan.analytic import estimate, flops
from jaxlm.plan.compiler import compile_plan, oom_bytes, plan
from jaxlm.plan.rank import REMATS, candidates, layouts, search
from jaxlm.plan.report import Plan
from jaxlm.plan.topology import CHIPS, LIBTPU_FIX, Chip, GiB, Topology, devices, has_libtpu, parse_topology

__all__ = ["CHIPS", "Chip", "Topology", "Plan", "parse_topology", "has_libtpu", "devices", "estimate",
           "compile_plan", "plan", "search", "candidates", "layouts", "activation_bytes", "flops",
           "abstract_batch", "oom_bytes", "GiB", "LIBTPU_FIX", "REMATS"]
