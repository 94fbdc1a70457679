"""The compiled steps: the train step under ``jax.jit`` (explicit shardings, donated state) or ``jax.pmap``,
its ahead-of-time lowering, and the evaluation step.

One module so that every way a step reaches the devices is in one place; the shardings it is given come
from :mod:`jaxlm.parallel.shardings` and :mod:`jaxlm.parallel.batches`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding

from jaxlm import sharding
from jaxlm.parallel.mesh import GRAD_AXIS


def compile_pmap(step: Callable, devices: list, *, donate: bool = True) -> Callable:
    """``step(state, batch) -> (state, metrics)`` under ``jax.pmap`` over ``devices`` with axis
    :data:`GRAD_AXIS` (the step must be built with ``grad_axis_name=GRAD_AXIS``); metrics come back from
    the first replica."""
    # every process maps over its own devices; the axis (and lax.pmean) spans all processes
    mapped = jax.pmap(step, axis_name=GRAD_AXIS, devices=None if jax.process_count() > 1 else devices,
                      donate_argnums=(0,) if donate else ())

    def run_pmap(state, batch):
        state, metrics = mapped(state, batch)
        return state, jax.tree.map(lambda m: m[0], metrics)

    return run_pmap


def compile_jit(step: Callable, state_sh: Any, batch_sh: NamedSharding, mesh: Mesh, rules=None, *,
                donate: bool = True) -> Callable:
    """``step(state, batch) -> (state, metrics)`` under ``jax.jit`` with ``in_shardings=(state_sh,
    batch_sh)``, ``out_shardings=(state_sh, replicated)`` and the state donated, run inside
    :func:`jaxlm.sharding.use_mesh` so the models' activation constraints apply. The result's ``.jitted``
    is the ``jax.jit`` object (for ``.lower()`` and cost analysis)."""
    rep = sharding.replicated(mesh)
    jitted = jax.jit(step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, rep),
                     donate_argnums=(0,) if donate else ())

    def run_jit(state, batch):
        with sharding.use_mesh(mesh, rules):
            return jitted(state, batch)

    run_jit.jitted = jitted  # for .lower() / cost analysis
    return run_jit


def lower(jitted: Any, state: Any, batch: Any, mesh: Mesh, rules=None) -> Any:
    """``jitted`` (a :func:`compile_jit` result's ``.jitted``) lowered for abstract ``state`` and ``batch``
    (``ShapeDtypeStruct`` trees) inside the mesh: ``.compile()`` runs the compiler ahead of time."""
    with sharding.use_mesh(mesh, rules):
        return jitted.lower(state, batch)


def compile_eval(eval_step: Callable, state_sh: Any, batch_sh: NamedSharding, mesh: Mesh, rules=None, *,
                 constrain: bool = True) -> Callable:
    """``eval_step(params_or_state, batch) -> metrics`` jitted with ``in_shardings=(state_sh, batch_sh)``
    and metrics replicated on ``mesh``; ``constrain``: run inside :func:`jaxlm.sharding.use_mesh` so the
    models' activation constraints apply (off for a pmap run's unreplicated, replicated state)."""
    jitted = jax.jit(eval_step, in_shardings=(state_sh, batch_sh), out_shardings=sharding.replicated(mesh))

    def run(state, batch):
        with sharding.use_mesh(mesh if constrain else None, rules):
            return jitted(state, batch)

    return run
