"""The run as ``jaxlm train`` would run it on a topology: its config resolved for the slice
(:func:`run_for`: remat ``"auto"`` for the platform, a ``-1`` mesh size filled), and its train state and
batch as abstract values (``ShapeDtypeStruct`` s with shardings, :func:`abstract_step`; nothing
allocated)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxlm import sharding
from jaxlm.config import ConfigError
from jaxlm.models import family_of
from jaxlm.nn import stack
from jaxlm.plan.topology import Topology
from jaxlm.train import config as C


def run_for(run: C.RunConfig, topo: Topology) -> C.RunConfig:
    """``run`` resolved, with a ``-1`` mesh size filled from the topology and the product checked."""
    if run.finetune.lora.enabled:  # its state and gradients cover the adapters only: a different step
        raise ConfigError("jaxlm plan models full training; a finetune.lora run (adapters over a frozen base) is "
                          "not planned yet. Drop the finetune.lora.* settings for an upper bound (full "
                          "fine-tuning needs more memory than LoRA).")
    run = C.resolve(run)
    # "auto" remat is the policy for the platform planned for (nn/stack.py), named so the plan shows it
    on = "cpu" if topo.kind == "cpu" else "tpu"
    run = run.replace(model=run.model.replace(remat=stack.resolve_remat(run.model.remat, on)))
    m = run.mesh
    sizes = {a: getattr(m, a) for a in mesh_axes(m)}
    free = [a for a, v in sizes.items() if v == -1]
    fixed = math.prod(v for v in sizes.values() if v != -1)
    shown = " x ".join(f"{a}={v}" for a, v in sizes.items() if a != "context" or v != 1)
    if len(free) > 1:
        raise ConfigError(f"mesh {shown}: at most one mesh size may be -1.")
    if free:
        if topo.chips % fixed:
            raise ConfigError(f"mesh {shown} cannot fill the {topo.chips} devices of {topo.name}: {topo.chips} is "
                              f"not divisible by {fixed}; choose sizes whose product divides {topo.chips}.")
        sizes[free[0]] = topo.chips // fixed
    elif fixed != topo.chips:
        raise ConfigError(f"mesh {shown} = {fixed} devices, but {topo.name} has {topo.chips}: choose sizes whose "
                          f"product is {topo.chips} (or set one of them to -1 to fill the rest).")
    if sizes["context"] > 1:
        from jaxlm.nn import context as ctx

        ctx.check_divides(run.data.seq_len, sizes["context"])
    if m.parallel != "jit":
        raise ConfigError("jaxlm plan compiles the jit step (mesh.parallel=jit); a pmap run holds a full replica "
                          "per device, i.e. the plan of mesh.data=N with mesh.fsdp=1 mesh.tensor=1.")
    return run.replace(mesh=dataclasses.replace(m, **sizes))


def mesh_axes(mesh_cfg: C.MeshConfig) -> tuple[str, ...]:
    """The mesh config's size fields (data, fsdp, context, tensor)."""
    return sharding.MESH_AXES


def mesh_sizes(run: C.RunConfig) -> dict[str, int]:
    """``{axis: size}`` of the run's mesh, in :data:`jaxlm.sharding.MESH_AXES` order."""
    return {a: int(getattr(run.mesh, a)) for a in mesh_axes(run.mesh)}


def seq_lens(run: C.RunConfig) -> tuple[int, int | None]:
    """(source tokens T, target tokens U of a seq2seq run, else None) per row."""
    d = run.data
    return d.seq_len, (d.target_len or d.seq_len) if run.train.task == "seq2seq" else None


def abstract_batch(run: C.RunConfig) -> dict:
    """``ShapeDtypeStruct`` s of one micro-batch as :mod:`jaxlm.data` feeds the task (packed rows carry
    ``segment_ids`` and ``positions``; see :func:`jaxlm.data.packing.pack`)."""
    B = run.train.batch_size // run.train.grad_accum
    T, U = seq_lens(run)
    i32, f32 = jnp.int32, jnp.float32
    s = lambda *shape, dt=i32: jax.ShapeDtypeStruct(shape, dt)  # noqa: E731
    task = run.train.task
    if task == "causal_lm":
        return {"inputs": s(B, T), "targets": s(B, T), "weights": s(B, T, dt=f32), "segment_ids": s(B, T),
                "positions": s(B, T)}
    if task == "mlm":
        return {"tokens": s(B, T), "maskable": s(B, T, dt=jnp.bool_), "segment_ids": s(B, T),
                "positions": s(B, T)}
    if task == "seq2seq":
        return {"src": s(B, T), "src_valid": s(B, T), "tgt_in": s(B, U), "tgt_out": s(B, U), "tgt_valid": s(B, U),
                "weights": s(B, U, dt=f32)}
    if task == "classification":
        return {"tokens": s(B, T), "valid": s(B, T), "labels": s(B)}
    return {"tokens": s(B, T), "valid": s(B, T), "start": s(B), "end": s(B)}  # span


def _task(run: C.RunConfig):
    from jaxlm.train.tasks import make_task

    t = run.train
    opts = {"label_smoothing": t.label_smoothing, "z_loss": t.z_loss, "dropout": t.dropout, "mlm_prob": t.mlm_prob}
    if t.task == "mlm":  # the ids only matter for values, not shapes
        opts |= {"mask_id": run.model.vocab_size - 1, "random_high": run.model.vocab_size}
    return make_task(t.task, **opts)


def abstract_step(run: C.RunConfig, devs: Sequence | None) -> tuple[Any, Any, Any]:
    """(Compiled of :func:`jaxlm.train.setup.build` on ``devs`` (None: no devices, analytic mode), abstract
    state with shardings, abstract batch with shardings). With ``devs=None`` the shardings live on an
    :class:`jax.sharding.AbstractMesh` of the same shape: shard shapes without any device."""
    from jaxlm.parallel import tree_shardings
    from jaxlm.train.setup import build
    from jaxlm.train.state import create_state

    task = _task(run)
    if devs is not None:
        c = build(task, run, devices=devs)
        opt, par = c.optimizer, c.par
    else:
        from jaxlm.train.optim import make_optimizer

        c, opt, par = None, make_optimizer(run.train, run.model), None
    shapes = jax.eval_shape(lambda k: create_state(k, run.model, opt), jax.random.key(0))
    if par is not None:
        state, bs = par.abstract_state(shapes), par.batch_sharding()
    else:
        ms = mesh_sizes(run)
        mesh = jax.sharding.AbstractMesh(tuple(ms.values()), tuple(ms))
        sh = tree_shardings(shapes, family_of(run.model).spec(run.model), mesh)
        state = jax.tree.map(lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h), shapes, sh)
        bs = jax.sharding.NamedSharding(mesh, sharding.logical_to_pspec(("batch",), mesh))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bs) for k, v in abstract_batch(run).items()}
    return c, state, batch
