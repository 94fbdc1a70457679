"""Shardings of a whole train state: each leaf's ``NamedSharding`` from the parameter spec and the rules.

Separate from placing the state (:mod:`jaxlm.parallel.placement`) because the step compiler, the placement and
the Orbax restore target all need the same shardings, and computing them allocates nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlm import sharding
from jaxlm.nn import quant
from jaxlm.params import Param, flatten

log = logging.getLogger(__name__)


def _names(keypath) -> tuple:
    """A jax key path as plain names: dict keys and attribute names as str, sequence indices as int."""
    out = []
    for k in keypath:
        if isinstance(k, jax.tree_util.DictKey):
            out.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            out.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            out.append(k.idx)
        else:  # FlattenedIndexKey and friends
            out.append(str(k))
    return tuple(out)


def tree_shardings(tree: Any, spec: Mapping, mesh: Mesh, rules=None) -> Any:
    """NamedShardings for every leaf of ``tree`` (a TrainState, a params tree, an optimizer state...):
    a leaf whose key path ends with a parameter's path in ``spec`` and has that parameter's shape gets the
    parameter's sharding; every other leaf (step counters, RNG keys, scalars) is replicated.

    Matching path suffixes covers the params, Adam's ``mu``/``nu`` and any optax wrapper (masks,
    MultiSteps, chains) without knowing the optimizer, and works on ``ShapeDtypeStruct`` trees too. A
    quantized weight (:class:`jaxlm.nn.quant.QArray`, e.g. a QLoRA run's frozen base) gets a QArray of
    shardings: integers and scales sharded by the weight's axes (:func:`jaxlm.nn.quant.shardings`).
    """
    flat_spec: dict[str, Param] = flatten(spec)
    index = {tuple(k.split("/")): (p, NamedSharding(mesh, sharding.logical_to_pspec(p.axes, mesh, rules,
                                                                                       p.shape, what=k)))
             for k, p in flat_spec.items()}
    rep = sharding.replicated(mesh)
    longest = max((len(k) for k in index), default=0)

    def pick(keypath, leaf):
        names = _names(keypath)
        q = quant.is_quantized(leaf)  # a quantized weight: its integers and scales follow the weight's axes
        shape = tuple(leaf.shape if q else np.shape(leaf))
        for start in range(max(0, len(names) - longest), len(names)):
            hit = index.get(names[start:])
            if hit is not None and hit[0].shape == shape:
                return quant.shardings({"w": leaf}, {"w": hit[0]}, mesh, rules)["w"] if q else hit[1]
        return jax.tree.map(lambda _: rep, leaf) if q else rep

    return jax.tree_util.tree_map_with_path(pick, tree, is_leaf=quant.is_quantized)


def _unmatched_large(tree: Any, shardings: Any, mesh: Mesh) -> list[str]:
    """Paths of big leaves left replicated although the mesh could shard (a spec/params mismatch)."""
    out = []
    for (kp, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(shardings)):
        if mesh.size > 1 and np.size(leaf) >= 4096 and sh.spec == PartitionSpec():
            out.append(jax.tree_util.keystr(kp))
    return out


def replicated_tree(tree: Any, mesh: Mesh) -> Any:
    """A replicated NamedSharding for every leaf of ``tree``."""
    return jax.tree.map(lambda _: sharding.replicated(mesh), tree)


def state_shardings(state: Any, spec: Mapping | None, mesh: Mesh, rules=None) -> Any:
    """NamedShardings for ``state`` (arrays or ShapeDtypeStructs) by :func:`tree_shardings`; all replicated
    when there is no ``spec``. Warns when large leaves match no parameter on a mesh that shards parameters."""
    if spec is None:
        return replicated_tree(state, mesh)
    shardings = tree_shardings(state, spec, mesh, rules)
    missed = _unmatched_large(state, shardings, mesh)
    if missed and any(s > 1 for s in (mesh.shape["fsdp"], mesh.shape["tensor"])):
        log.warning("%d large state leaves match no parameter of the spec and stay replicated, e.g. %s",
                    len(missed), missed[:3])
    return shardings


def plain_shardings(state: Any, spec: Mapping | None, mesh: Mesh, rules, mode: str) -> Any:
    """Shardings of the plain-layout state (checkpoints, evaluation): :func:`state_shardings` under jit;
    replicated under pmap, whose unreplicated state lives whole on every device of the ``(n, 1, 1)`` mesh."""
    return state_shardings(state, spec, mesh, rules) if mode == "jit" else replicated_tree(state, mesh)
