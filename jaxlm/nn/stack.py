"""A stack of identical layers stored with a leading ``layers`` axis, run by ``lax.scan`` (default) or by a
plain Python loop over the same tree (for notebooks and debugging; tested equal), or over a list of
per-layer trees (the KV-cache decode loop, which splits the stack once, outside its token loop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jaxlm.params import is_param

REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # no rematerialisation: save every residual
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute the rest
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight matmuls only
}


# "auto" (the models' default): the policy measured fastest for the platform. On CPU, keeping only the
# weight-matmul outputs beats keeping every residual (the scan's stacked residual traffic costs more than
# recomputing the layer's elementwise work: benchmarks/RESULTS.md "Training"); on TPU/GPU nothing is
# recomputed, the fastest step when it fits (`jaxlm plan --search` picks a policy when it does not).
AUTO_REMAT = {"cpu": "dots_no_batch"}


def resolve_remat(remat: str, on: str) -> str:
    """``remat`` itself, or for ``"auto"`` the policy for platform ``on`` ("cpu", "gpu", "tpu")."""
    return AUTO_REMAT.get(on, "none") if remat == "auto" else remat


def spec(block_spec: dict, n: int) -> dict:
    """Every parameter of ``block_spec`` stacked ``n`` times along a new leading ``"layers"`` axis."""
    return jax.tree.map(lambda p: p.stacked(n), block_spec, is_leaf=is_param)


def layer(params: dict, i: int) -> dict:
    """The parameters of layer ``i`` of a stacked tree."""
    return jax.tree.map(lambda a: a[i], params)


def apply(
    block_fn: Callable,
    params: dict | list,
    x: jax.Array,
    xs: Any = None,
    *,
    scan: bool = True,
    remat: str = "none",
) -> tuple[jax.Array, Any]:
    """Run ``block_fn(layer_params, x, layer_xs) -> (x, layer_ys)`` over the layers.

    ``params`` is a stacked tree (leading layers axis) and ``xs`` a pytree with a leading layers axis
    (per-layer caches, dropout keys) or None; returns (x, ys) with ys stacked along a leading layers axis.
    ``params`` may instead be a list of per-layer trees, with ``xs`` a list of per-layer inputs (or None):
    the layers then run in a Python loop and ys is a list. ``remat`` picks a policy from
    :data:`REMAT_POLICIES`.
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; choose one of {list(REMAT_POLICIES)}.")
    fn = block_fn
    if remat != "none":
        fn = jax.checkpoint(block_fn, policy=REMAT_POLICIES[remat], prevent_cse=not scan)
    if isinstance(params, list):
        ys = []
        for i, p in enumerate(params):
            x, y = fn(p, x, None if xs is None else xs[i])
            ys.append(y)
        return x, ys
    if scan:
        def body(carry, inp):
            p, layer_xs = inp
            return fn(p, carry, layer_xs)

        return jax.lax.scan(body, x, (params, xs))
    n = jax.tree.leaves(params)[0].shape[0]
    ys = []
    for i in range(n):
        x, y = fn(layer(params, i), x, None if xs is None else layer(xs, i))
        ys.append(y)
    stacked = jax.tree.map(lambda *a: jax.numpy.stack(a), *ys) if ys and jax.tree.leaves(ys[0]) else ys[0]
    return x, stacked
