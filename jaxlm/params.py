"""Parameter descriptions and the machinery derived from them.

A *spec* is a nested dict whose leaves are :class:`Param` descriptions. Everything else derives from it:
``init`` draws the arrays (optionally born sharded on a mesh), ``count`` gives exact sizes without
allocating, ``abstract`` gives the ``ShapeDtypeStruct`` tree that Orbax restores into, and
``logical_axes`` gives the tree of logical axis names the sharding rules map onto a mesh.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


# --- initialisers: (key, shape, dtype) -> array ------------------------------------------------------
def normal(std: float = 0.02) -> Initializer:
    """N(0, std^2), the GPT-2 / BERT initialiser."""

    def init(key, shape, dtype):
        return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    init.__name__ = f"normal({std})"
    return init


def truncated_normal(std: float = 0.02) -> Initializer:
    """Normal truncated to two standard deviations (BERT's TF initialiser)."""

    def init(key, shape, dtype):
        return (std * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)).astype(dtype)

    init.__name__ = f"truncated_normal({std})"
    return init


def xavier_uniform(fan_in_axes: tuple[int, ...] = (0,), fan_out_axes: tuple[int, ...] = (-1,)) -> Initializer:
    """Glorot uniform over the given fan-in/fan-out axes (the Transformer reference code's initialiser)."""

    def init(key, shape, dtype):
        fan_in = math.prod(shape[a] for a in fan_in_axes)
        fan_out = math.prod(shape[a] for a in fan_out_axes)
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return jax.random.uniform(key, shape, jnp.float32, -limit, limit).astype(dtype)

    init.__name__ = "xavier_uniform"
    return init


def zeros(key, shape, dtype):
    del key
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype):
    del key
    return jnp.ones(shape, dtype)


@dataclass(frozen=True)
class Param:
    """One parameter, declared once: its shape, logical axis names, initialiser and storage dtype.

    ``axes`` has one logical name per dimension (``"vocab"``, ``"embed"``, ``"mlp"``, ``"heads"``,
    ``"kv_heads"``, ``"head_dim"``, ``"layers"`` or ``None``); the sharding rules map names to mesh axes.
    """

    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    init: Initializer = field(default=normal(0.02), compare=False)
    dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "axes", tuple(self.axes))
        if len(self.shape) != len(self.axes):
            raise ValueError(
                f"Param shape {self.shape} has {len(self.shape)} dims but axes {self.axes} name "
                f"{len(self.axes)}: give one logical axis name (or None) per dimension."
            )
        if any(s <= 0 for s in self.shape):
            raise ValueError(f"Param shape {self.shape} has a non-positive dimension; every size must be >= 1.")

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def stacked(self, n: int, axis_name: str = "layers") -> Param:
        """This parameter repeated ``n`` times along a new leading axis; each copy drawn independently."""
        inner = self.init

        def init(key, shape, dtype):
            keys = jax.random.split(key, shape[0])
            return jax.vmap(lambda k: inner(k, shape[1:], dtype))(keys)

        return Param((n, *self.shape), (axis_name, *self.axes), init, self.dtype)

    def with_dtype(self, dtype) -> Param:
        return Param(self.shape, self.axes, self.init, dtype)


def is_param(x: Any) -> bool:
    return isinstance(x, Param)


def flatten(tree: Mapping) -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}`` (the path strings used for keys, logs and name maps)."""
    return traverse_util.flatten_dict(dict(tree), sep="/") if tree else {}


def unflatten(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def _path_key(key: jax.Array, path: str) -> jax.Array:
    # A stable hash of the path (Python's hash() is salted per process), so a leaf's value depends only
    # on (key, path): adding or removing other parameters never changes it.
    return jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)


def _init_flat(key: jax.Array, flat_spec: dict[str, Param]) -> dict[str, jax.Array]:
    return {path: p.init(_path_key(key, path), p.shape, p.dtype) for path, p in flat_spec.items()}


def init(key: jax.Array, spec: Mapping, shardings: Mapping | None = None) -> dict:
    """Draw every parameter of ``spec``; returns a nested dict of arrays with the spec's structure.

    Each leaf uses ``fold_in(key, crc32(path))``. With ``shardings`` (a tree of ``jax.sharding.Sharding``
    matching ``spec``, e.g. :func:`jaxlm.sharding.param_shardings`), initialisation runs under
    ``jax.jit(out_shardings=...)`` so parameters are born sharded and never exist whole on one host
    (:func:`jaxlm.sharding.init` does this for a mesh).
    """
    flat_spec = flatten(spec)
    _check_spec(flat_spec)
    if shardings is None:
        return unflatten(_init_flat(key, flat_spec))
    fn = jax.jit(lambda k: _init_flat(k, flat_spec), out_shardings=flatten(shardings))
    return unflatten(fn(key))


def _check_spec(flat_spec: dict) -> None:
    bad = [k for k, v in flat_spec.items() if not isinstance(v, Param)]
    if bad:
        raise TypeError(f"spec leaves must be Param; these are not: {bad[:5]}")


def count(spec_or_params: Mapping) -> int:
    """Exact number of scalars in a spec (nothing allocated) or in a params tree."""
    flat = flatten(spec_or_params)
    return int(sum(v.size if isinstance(v, Param) else int(np.prod(np.shape(v))) for v in flat.values()))


def abstract(spec: Mapping, shardings: Mapping | None = None) -> dict:
    """``ShapeDtypeStruct`` tree for ``spec`` (with ``shardings`` attached when given): an Orbax restore
    target, or the input of ``jax.eval_shape``-style planning, on any mesh."""
    flat = flatten(spec)
    flat_sh = flatten(shardings) if shardings is not None else {}
    return unflatten(
        {k: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=flat_sh.get(k)) for k, p in flat.items()}
    )


def logical_axes(spec: Mapping) -> dict:
    """Tree of logical axis-name tuples, one per parameter."""
    return jax.tree.map(lambda p: p.axes, spec, is_leaf=is_param)


def cast(spec: Mapping, dtype) -> dict:
    """The same spec with every parameter stored as ``dtype``."""
    return jax.tree.map(lambda p: p.with_dtype(dtype), spec, is_leaf=is_param)


def check_params(params: Mapping, spec: Mapping, what: str = "params") -> None:
    """Raise a ValueError naming every path whose presence or shape disagrees with ``spec``."""
    fp, fs = flatten(params), flatten(spec)
    missing = sorted(set(fs) - set(fp))
    extra = sorted(set(fp) - set(fs))
    wrong = [
        f"{k}: got {tuple(np.shape(fp[k]))}, expected {fs[k].shape}"
        for k in sorted(set(fp) & set(fs))
        if tuple(np.shape(fp[k])) != fs[k].shape
    ]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:8]}")
        if extra:
            parts.append(f"unexpected {extra[:8]}")
        if wrong:
            parts.append("shape mismatch " + "; ".join(wrong[:8]))
        raise ValueError(f"{what} do not match the model config: " + ", ".join(parts) + ".")


def summary(spec: Mapping) -> str:
    """A table of every parameter path with shape, logical axes and size."""
    rows = [(k, str(p.shape), str(p.axes), f"{p.size:,}") for k, p in flatten(spec).items()]
    w = [max(len(r[i]) for r in rows) for i in range(4)] if rows else [0] * 4
    lines = [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:<{w[2]}}  {d:>{w[3]}}" for a, b, c, d in rows]
    lines.append(f"total: {count(spec):,}")
    return "\n".join(lines)
