"""The analytic estimate (:func:`estimate`): a :class:`~jaxlm.plan.report.Plan` with no compiler and no
device. The state's bytes are exact, from the parameter spec and the shardings on an abstract mesh;
gradients are one more copy of the parameters (two with gradient accumulation); activations are counted
by :func:`~jaxlm.plan.activations.activation_bytes`; FLOPs come from the model (:func:`flops`)."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np

from jaxlm import metrics as M
from jaxlm import params as P
from jaxlm.models import family_of
from jaxlm.nn import ffn
from jaxlm.plan.abstract import abstract_batch, abstract_step, mesh_sizes, run_for, seq_lens
from jaxlm.plan.activations import activation_bytes
from jaxlm.plan.report import Plan
from jaxlm.plan.topology import Topology
from jaxlm.train import config as C

# extra forward FLOPs (as a fraction of the 2 N + 4 L T D forward) recomputed in the backward pass
RECOMPUTE = {"none": 0.0, "dots_no_batch": 0.1, "dots": 0.05, "full": 1.0}


def flops(run: C.RunConfig) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one optimizer step over the global batch."""
    cfg = run.model
    n = P.count(family_of(cfg).spec(cfg))
    T = seq_lens(run)[0]
    layers = cfg.n_layers + getattr(cfg, "dec_layers", 0)
    per_token = M.flops_per_token(n, layers, T, cfg.d_model)
    model = per_token * run.train.batch_size * T
    forward = model / 3.0
    return model, model + RECOMPUTE.get(cfg.remat, 0.0) * forward


def _shard_bytes(shape, dtype, sh) -> int:
    """Bytes of one device's shard of a ``shape`` array under sharding ``sh`` (None: the whole array)."""
    local = sh.shard_shape(tuple(shape)) if sh is not None else tuple(shape)
    return int(math.prod(local)) * np.dtype(dtype).itemsize


@functools.lru_cache(maxsize=512)
def _state_bytes(run: C.RunConfig) -> tuple[int, int, int]:
    """Per-device (parameter, optimizer-state, largest layer's parameter) bytes: exact, from the abstract
    state's shardings (a layer: one slice of a stacked ``layers`` tree, e.g. a decoder's block)."""
    _, state, _ = abstract_step(run, None)
    p_bytes = sum(_shard_bytes(x.shape, x.dtype, x.sharding) for x in jax.tree.leaves(state.params))
    all_bytes = sum(_shard_bytes(x.shape, x.dtype, x.sharding) for x in jax.tree.leaves(state))
    # parameters stacked along the logical "layers" axis (nn/stack.spec), one layer's share of them, per
    # top-level tree (a decoder's "layers"; an encoder-decoder's "encoder" and "decoder")
    axes = P.flatten(P.logical_axes(family_of(run.model).spec(run.model)))
    stacks: dict[str, int] = {}
    for k, x in P.flatten(state.params).items():
        if axes[k][:1] == ("layers",):
            top = k.split("/")[0]
            stacks[top] = stacks.get(top, 0) + _shard_bytes(x.shape, x.dtype, x.sharding) // x.shape[0]
    layer = max(stacks.values(), default=0)
    return p_bytes, all_bytes - p_bytes, layer


def _batch_bytes(run: C.RunConfig) -> int:
    """Per-device bytes of one micro-batch: rows split over data x fsdp."""
    ms = mesh_sizes(run)
    dp = ms["data"] * ms["fsdp"]
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize // dp for x in abstract_batch(run).values())


def estimate(run: C.RunConfig, topo: Topology, *, utilisation: float = 0.5) -> Plan:
    """The analytic :class:`Plan` of ``run`` on ``topo``: state bytes exact from the abstract state and its
    shardings on an abstract mesh (no device, no compile), gradients as one more copy of the parameters,
    activations by :func:`activation_bytes`."""
    run = run_for(run, topo)
    # the state does not depend on remat, batch or how many micro-batches (only on whether there are several)
    t = run.train
    key = run.replace(model=run.model.replace(remat="none"), data=C.DataConfig(),
                      train=dataclasses.replace(t, batch_size=2, grad_accum=min(t.grad_accum, 2)))
    p_bytes, o_bytes, layer_bytes = _state_bytes(key)
    batch_bytes = _batch_bytes(run)
    acts = activation_bytes(run, "cpu" if topo.chip is None else "tpu")
    # one gradient per parameter, sharded like it (reduce-scattered); with several micro-batches, the
    # float32 accumulator beside the current micro-batch's gradient
    grads = p_bytes * (2 if t.grad_accum > 1 else 1)
    # FSDP / tensor parallelism: a layer's weights are gathered whole (per tensor shard) for its matmuls
    ms = mesh_sizes(run)
    cfg = run.model
    fs = ms.get("fsdp", 1) * ms.get("context", 1)
    gathered = layer_bytes * fs if fs > 1 else 0  # one layer's weights, gathered
    if getattr(cfg, "n_experts", 0) and ms.get("data", 1) * fs > 1:
        # the MoE dispatch runs per shard of tokens: one layer's experts all-gathered in the compute dtype
        # (their hidden dimension stays split over tensor), in the forward and again in the backward
        n_mats = 3 if cfg.activation in ffn.GATED else 2
        one_layer = cfg.n_experts * n_mats * cfg.d_model * cfg.d_ff * np.dtype(cfg.dtype).itemsize
        gathered += 2 * one_layer / ms.get("tensor", 1)
    temps = grads + acts["kept"] + acts["one_layer"] + acts["loss"] + acts["mask"] + int(gathered)
    model_f, hw_f = flops(run)
    total = p_bytes + o_bytes + temps + batch_bytes
    return Plan(run=run, topology=topo, source="analytic", params=p_bytes, opt_state=o_bytes, temporaries=temps,
                other=batch_bytes, flops_per_step=model_f, hardware_flops_per_step=hw_f, utilisation=utilisation,
                analytic={"total": total, "gradients": grads, "gathered_weights": int(gathered), **acts})
