"""Logical axis names -> device mesh.

Model code names logical axes only (``"batch"``, ``"embed"``, ``"heads"`` ...); one rules table maps them
onto the mesh axes ``("data", "fsdp", "tensor")``. On a laptop the mesh is ``(1, 1, 1)`` and every rule is
a no-op, so the same code runs from one CPU to a pod.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlm.params import Param, flatten, is_param, unflatten

log = logging.getLogger(__name__)

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("seq", None),
    ("kv_seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def make_mesh(
    data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh with Auto axis types. One of the sizes may be -1 (fill the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): at most one size may be -1.")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if len(devices) % known:
            raise ValueError(
                f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}) cannot fill {len(devices)} devices: "
                f"{len(devices)} is not divisible by {known}."
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if any(s < 1 for s in sizes):
        raise ValueError(f"mesh sizes must be >= 1 (or one -1), got data={data}, fsdp={fsdp}, tensor={tensor}.")
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} devices, but "
            f"{len(devices)} are available: make the product equal {len(devices)} (or set one size to -1)."
        )
    arr = np.asarray(devices).reshape(sizes)
    return Mesh(arr, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _rules_dict(rules) -> dict:
    return dict(RULES if rules is None else rules)


def logical_to_pspec(
    axes: Sequence[str | None], mesh: Mesh | None = None, rules=None, shape: Sequence[int] | None = None
) -> PartitionSpec:
    """PartitionSpec for a tensor with logical ``axes``. With ``mesh`` and ``shape``, a dimension that does
    not divide its mesh axes stays replicated (logged), and a mesh axis is used at most once."""
    table = _rules_dict(rules)
    used: set[str] = set()
    out = []
    for i, name in enumerate(axes):
        target = table.get(name) if name is not None else None
        if target is None:
            out.append(None)
            continue
        targets = (target,) if isinstance(target, str) else tuple(target)
        targets = tuple(t for t in targets if t not in used)
        if mesh is not None:
            targets = tuple(t for t in targets if mesh.shape[t] > 1)
        if shape is not None and mesh is not None and targets:
            size = math.prod(mesh.shape[t] for t in targets)
            if shape[i] % size:
                log.info("axis %r (dim %d = %d) does not divide mesh %s = %d: replicated",
                         name, i, shape[i], targets, size)
                targets = ()
        used.update(targets)
        out.append(None if not targets else targets[0] if len(targets) == 1 else targets)
    return PartitionSpec(*out)


def param_pspecs(spec: Mapping, mesh: Mesh | None = None, rules=None) -> dict:
    """Tree of PartitionSpecs for a spec."""
    return jax.tree.map(lambda p: logical_to_pspec(p.axes, mesh, rules, p.shape), spec, is_leaf=is_param)


def param_shardings(spec: Mapping, mesh: Mesh, rules=None) -> dict:
    """Tree of NamedShardings for a spec on ``mesh``."""
    return jax.tree.map(
        lambda p: NamedSharding(mesh, logical_to_pspec(p.axes, mesh, rules, p.shape)), spec, is_leaf=is_param
    )


def sharding_report(spec: Mapping, mesh: Mesh, rules=None) -> str:
    """One line per parameter with its PartitionSpec and the share of bytes that are replicated."""
    flat = flatten(spec)
    lines, replicated, total = [], 0, 0
    for path, p in flat.items():
        ps = logical_to_pspec(p.axes, mesh, rules, p.shape)
        nbytes = p.size * np.dtype(p.dtype).itemsize
        total += nbytes
        if all(s is None for s in ps):
            replicated += nbytes
        lines.append(f"{path:<40} {str(p.shape):<22} {str(tuple(ps))}")
    frac = replicated / max(total, 1)
    lines.append(f"replicated: {frac:.1%} of {total / 2**20:.1f} MiB of parameters")
    if mesh.size >= 8 and frac > 0.5:
        lines.append(f"WARNING: most parameter bytes ({frac:.0%}) are replicated on a {mesh.size}-device mesh")
    return "\n".join(lines)


# --- activation constraints ---------------------------------------------------------------------------
_CONTEXT: contextvars.ContextVar = contextvars.ContextVar("jaxlm_mesh", default=None)


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None, rules=None):
    """Within this context, :func:`constrain` pins activations to ``mesh`` by ``rules``."""
    token = _CONTEXT.set(None if mesh is None else (mesh, rules))
    try:
        yield mesh
    finally:
        _CONTEXT.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical axes inside :func:`use_mesh`; identity outside it."""
    ctx = _CONTEXT.get()
    if ctx is None:
        return x
    mesh, rules = ctx
    if mesh.size == 1:
        return x
    ps = logical_to_pspec(axes, mesh, rules, x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, ps))


def current_mesh() -> Mesh | None:
    ctx = _CONTEXT.get()
    return None if ctx is None else ctx[0]


__all__ = [
    "MESH_AXES", "RULES", "make_mesh", "logical_to_pspec", "param_pspecs", "param_shardings",
    "sharding_report", "use_mesh", "constrain", "current_mesh", "Param", "unflatten",
]
