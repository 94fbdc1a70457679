"""Logical axis names -> device mesh.

Model code names logical axes only (``"batch"``, ``"embed"``, ``"heads"`` ...); one rules table maps them
onto the mesh axes ``("data", "fsdp", "context", "tensor")`` (``context`` shards the sequence dimension of
activations: context parallelism, :mod:`jaxlm.nn.ring`). On a laptop the mesh is ``(1, 1, 1)`` and every rule is
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

from jaxlm import params as P
from jaxlm.config import ConfigError
from jaxlm.params import flatten, unflatten

log = logging.getLogger(__name__)

# tensor innermost (neighbouring chips: its all-reduces are the heaviest), context next to it
MESH_AXES: tuple[str, ...] = ("data", "fsdp", "context", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    # FSDP also over context: context-parallel devices hold different tokens (like data parallelism), so
    # they can share the parameter shards too (ZeRO-3 across both)
    ("embed", ("fsdp", "context")),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    # MoE expert weights [E, ...]: whole experts per fsdp shard (see jaxlm/nn/moe.py and docs/architecture.md §5)
    ("experts", "fsdp"),
    ("seq", "context"),
    ("act_embed", None),
)


def make_mesh(
    data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None, *,
    context: int = 1,
) -> Mesh:
    """A ``(data, fsdp, context, tensor)`` mesh over ``devices`` (default: all devices of all processes) with
    Auto axis types. One of the sizes may be -1: it takes whatever the others leave.

    Without ``devices`` the device order comes from :func:`jax.make_mesh`, which knows TPU/GPU topologies
    (neighbouring chips share the innermost axis, ``tensor``, where communication is heaviest).
    """
    all_devices = list(jax.devices() if devices is None else devices)
    n = len(all_devices)
    sizes = [data, fsdp, context, tensor]
    shown = f"mesh.data={data}, mesh.fsdp={fsdp}, mesh.tensor={tensor}" + (f", mesh.context={context}"
                                                                            if context != 1 else "")
    if any(not isinstance(s, int | np.integer) or isinstance(s, bool) for s in sizes):
        raise ConfigError(f"{shown}: mesh sizes must be integers.")
    if sizes.count(-1) > 1:
        raise ConfigError(f"{shown}: at most one mesh size may be -1 (fill the rest).")
    if any(s < 1 and s != -1 for s in sizes):
        raise ConfigError(f"{shown}: mesh sizes must be >= 1 (or one of them -1).")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if n % known:
            raise ConfigError(
                f"{shown} cannot fill the {n} available devices: {n} is not divisible by {known}. "
                f"Make the fixed sizes multiply to a divisor of {n}."
            )
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        other = sizes[1] * sizes[2] * sizes[3]
        hint = f"mesh.data={n // other}" if n % other == 0 else "mesh.data=-1 with sizes that divide it"
        ctx = f" x context={sizes[2]}" if sizes[2] != 1 else ""
        raise ConfigError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]}{ctx} x tensor={sizes[3]} = {math.prod(sizes)} devices, but "
            f"{n} devices are available: choose sizes whose product is {n} (e.g. {hint}, or set one size "
            f"to -1 to fill the rest)."
        )
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if devices is None:
        return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types)
    return Mesh(np.asarray(all_devices).reshape(sizes), MESH_AXES, axis_types=axis_types)


def mesh_shape(mesh: Mesh | None) -> dict[str, int]:
    """``{"data": d, "fsdp": f, "context": c, "tensor": t}`` (all 1 without a mesh; an axis the mesh lacks
    counts 1)."""
    return {a: (1 if mesh is None else int(dict(mesh.shape).get(a, 1))) for a in MESH_AXES}


def _rules_dict(rules) -> dict:
    return dict(RULES if rules is None else rules)


# global because constrain() runs inside every trace with no caller object to hold it: each fallback is said
# once per process, not once per trace
_LOGGED: set[str] = set()


def _log_once(msg: str) -> None:
    if msg not in _LOGGED:
        _LOGGED.add(msg)
        log.warning(msg)


def logical_to_pspec(
    axes: Sequence[str | None],
    mesh: Mesh | None = None,
    rules=None,
    shape: Sequence[int] | None = None,
    *,
    what: str = "",
) -> PartitionSpec:
    """PartitionSpec for a tensor whose dimensions carry the logical ``axes``.

    Each logical name maps to mesh axes by ``rules`` (default :data:`RULES`). A mesh axis is used at most
    once per tensor (the first dimension that asks gets it), and mesh axes of size 1 are dropped. With
    ``mesh`` and ``shape``, a dimension that does not divide the product of its mesh axes keeps the longest
    leading run of them it does divide (often none: replicated), and a warning names it once.
    """
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"{what or 'tensor'}: {len(axes)} logical axes {tuple(axes)} for shape {tuple(shape)}.")
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
        if mesh is not None:  # a mesh without an axis (a 3-axis mesh has no "context") counts it as size 1
            targets = tuple(t for t in targets if dict(mesh.shape).get(t, 1) > 1)
        if shape is not None and mesh is not None and targets:
            size = math.prod(mesh.shape[t] for t in targets)
            if shape[i] % size:
                keep = targets
                while keep and shape[i] % math.prod(mesh.shape[t] for t in keep):
                    keep = keep[:-1]
                sizes = " x ".join(f"{t}={mesh.shape[t]}" for t in targets)
                fate = f"sharded over {keep} only" if keep else "replicated"
                _log_once(
                    f"{what + ': ' if what else ''}logical axis {name!r} (dim {i}, size {shape[i]}) does not "
                    f"divide mesh {sizes}: {fate}"
                )
                targets = keep
        used.update(targets)
        out.append(None if not targets else targets[0] if len(targets) == 1 else targets)
    return PartitionSpec(*out)


def param_pspecs(spec: Mapping, mesh: Mesh | None = None, rules=None) -> dict:
    """Tree of PartitionSpecs for a spec (same structure as the spec)."""
    flat = {k: logical_to_pspec(p.axes, mesh, rules, p.shape, what=k) for k, p in flatten(spec).items()}
    return unflatten(flat)


def param_shardings(spec: Mapping, mesh: Mesh, rules=None) -> dict:
    """Tree of NamedShardings for a spec on ``mesh`` (same structure as the spec)."""
    return jax.tree.map(lambda ps: NamedSharding(mesh, ps), param_pspecs(spec, mesh, rules),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def init(key: jax.Array, spec: Mapping, mesh: Mesh | None = None, rules=None) -> dict:
    """:func:`jaxlm.params.init` with every parameter born sharded over ``mesh`` by the logical-axis
    ``rules`` (default :data:`RULES`); plain (unsharded) arrays when ``mesh`` is None."""
    return P.init(key, spec, None if mesh is None else param_shardings(spec, mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of a value every device holds whole (step counters, RNG keys, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a batch array ``[batch, ...]``: the batch dimension over ``("data", "fsdp")``, the rest
    replicated. Callers check divisibility first (:func:`jaxlm.parallel.validate`): a batch that does not
    divide is an error, never a silent fallback."""
    ps = logical_to_pspec(("batch",) + (None,) * (ndim - 1), mesh)
    return NamedSharding(mesh, ps)


def sharding_report(spec: Mapping, mesh: Mesh, rules=None) -> str:
    """A table of every parameter with its shape, PartitionSpec and bytes per device, then the share of
    parameter bytes that are replicated (a WARNING line when that is most of them on a mesh of >= 8)."""
    flat = flatten(spec)
    rows, replicated_bytes, total, per_device = [], 0, 0, 0
    for path, p in flat.items():
        ps = logical_to_pspec(p.axes, mesh, rules, p.shape, what=path)
        nbytes = p.size * np.dtype(p.dtype).itemsize
        shards = math.prod(
            math.prod(mesh.shape[a] for a in ((s,) if isinstance(s, str) else s)) for s in ps if s is not None
        )
        total += nbytes
        per_device += nbytes // shards
        if shards == 1:
            replicated_bytes += nbytes
        rows.append((path, str(p.shape), str(tuple(ps)), f"{nbytes / shards / 2**10:,.1f} KiB"))
    w = [max([len(r[i]) for r in rows] + [0]) for i in range(4)]
    shown = {a: n for a, n in mesh.shape.items() if a != "context" or n > 1}  # context only when used
    lines = [f"mesh {shown} ({mesh.size} devices)"]
    lines += [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:<{w[2]}}  {d:>{w[3]}}" for a, b, c, d in rows]
    frac = replicated_bytes / max(total, 1)
    lines.append(
        f"parameters: {total / 2**20:.2f} MiB in all, {per_device / 2**20:.2f} MiB per device; "
        f"replicated: {frac:.1%} of bytes"
    )
    if mesh.size >= 8 and frac > 0.5:
        lines.append(
            f"WARNING: most parameter bytes ({frac:.0%}) are replicated on a {mesh.size}-device mesh: raise "
            f"mesh.fsdp or mesh.tensor so the rules can shard them"
        )
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


def gathered(w: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """A weight with logical ``axes`` as a table lookup wants it: its FSDP shards gathered (``"embed"``
    replicated) while tensor-parallel shards stay. Identity outside :func:`use_mesh`.

    Why: ``jnp.take`` on a table whose ``embed`` dimension is sharded over ``fsdp`` yields activations
    sharded on ``embed`` while the batch wants ``fsdp`` too; XLA's SPMD partitioner cannot move between the
    two and falls back to replicating the whole activation ("Involuntary full rematerialization").
    Gathering the table first is what FSDP does for every weight anyway (matmuls get it from XLA)."""
    return constrain(w, tuple(None if a == "embed" else a for a in axes))


def local_spec(x: jax.Array, axes: Sequence[str | None]) -> tuple[Mesh, PartitionSpec] | None:
    """(mesh in use, the PartitionSpec ``constrain`` would give ``x`` by its logical ``axes``), or None outside
    :func:`use_mesh` or on one device: what code that runs per shard (``jax.shard_map``) needs to know."""
    ctx = _CONTEXT.get()
    if ctx is None or ctx[0].size == 1:
        return None
    mesh, rules = ctx
    return mesh, logical_to_pspec(axes, mesh, rules, x.shape)


def current_mesh() -> Mesh | None:
    ctx = _CONTEXT.get()
    return None if ctx is None else ctx[0]


def axis_size(logical: str) -> int:
    """How many ways the logical axis ``logical`` is split on the mesh in use (1 outside :func:`use_mesh`):
    the product of the mesh axes the rules map it to. Lets model code ask "is the sequence sharded, and how
    many ways" without naming a mesh axis."""
    ctx = _CONTEXT.get()
    if ctx is None:
        return 1
    mesh, rules = ctx
    target = _rules_dict(rules).get(logical)
    names = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    shape = mesh_shape(mesh)
    n = 1
    for a in names:
        n *= shape.get(a, 1)
    return n


__all__ = [
    "MESH_AXES", "RULES", "make_mesh", "mesh_shape", "logical_to_pspec", "param_pspecs", "param_shardings",
    "replicated", "batch_sharding", "sharding_report", "use_mesh", "constrain", "gathered", "local_spec", "current_mesh",
    "axis_size",
]
