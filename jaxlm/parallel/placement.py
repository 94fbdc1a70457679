"""Where the train state lives: born sharded, replicated for pmap and back, and as an Orbax restore target.

Split from :mod:`jaxlm.parallel.shardings` because these move or allocate arrays, while shardings are
only computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxlm import sharding
from jaxlm.parallel.mesh import GRAD_AXIS
from jaxlm.parallel.shardings import plain_shardings, state_shardings


def born_sharded(fn: Callable[[jax.Array], Any], key: jax.Array, spec: Mapping | None, mesh: Mesh,
                 rules=None) -> Any:
    """``fn(key)`` run under ``jax.jit(out_shardings=...)``: every leaf is created on its devices (no whole
    copy on any host), with the same values as an unsharded call."""
    shapes = jax.eval_shape(fn, key)
    return jax.jit(fn, out_shardings=state_shardings(shapes, spec, mesh, rules))(key)


def replicate(state: Any, devices: list) -> Any:
    """``state`` replicated over ``devices`` with a leading device axis (pmap's layout)."""
    from flax import jax_utils

    # axis name = the pmap axis, so the replicated state has the sharding pmap returns (no recompile)
    return jax_utils.replicate(state, devices=devices, axis_name=GRAD_AXIS)


def unreplicate(state: Any, mesh: Mesh) -> Any:
    """The first replica of a pmap state, as global arrays replicated over ``mesh``."""
    from flax import jax_utils

    plain = jax_utils.unreplicate(state)
    rep = sharding.replicated(mesh)
    if jax.process_count() == 1:  # replicated on the mesh, where evaluation's jit expects it
        return jax.device_put(plain, rep)
    # multi-host: the first replica is host-local; Orbax and jit need global (replicated) arrays

    def to_global(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = jax.make_array_from_process_local_data(rep, np.asarray(jax.random.key_data(x)))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(rep, np.asarray(x))

    return jax.tree.map(to_global, plain)


def abstract_state(state_like: Any, spec: Mapping | None, mesh: Mesh, rules, mode: str) -> Any:
    """``ShapeDtypeStruct`` tree of ``state_like`` carrying the plain layout's shardings
    (:func:`jaxlm.parallel.shardings.plain_shardings`): the Orbax restore target that puts a checkpoint
    saved on any mesh straight onto this one."""
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), state_like)
    shardings = plain_shardings(shapes, spec, mesh, rules, mode)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
