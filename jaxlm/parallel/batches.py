"""Batches on the mesh: which rows each process loads and how a numpy batch becomes device arrays.

Its own module because the data path (:mod:`jaxlm.distributed`, the loop's loader) needs only this: the
rows a process owns, and the layout the compiled step expects.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxlm import sharding
from jaxlm.parallel.mesh import validate


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over ``("data", "fsdp")``, everything else replicated."""
    return NamedSharding(mesh, sharding.logical_to_pspec(("batch",), mesh))


def local_rows(batch_size: int, mesh: Mesh, mode: str) -> slice:
    """The rows of each global batch of ``batch_size`` that this process loads (and only those).

    Under jit this is the union of the rows its devices hold (a contiguous block, since the mesh lays
    processes out along ``data``); under pmap, an equal share per process."""
    if mode == "pmap" or jax.process_count() == 1:
        n = batch_size // jax.process_count()
        return slice(jax.process_index() * n, (jax.process_index() + 1) * n)
    idx = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
    starts = [s[0].start or 0 for s in idx.values()]
    stops = [batch_size if s[0].stop is None else s[0].stop for s in idx.values()]
    lo, hi = min(starts), max(stops)
    rows = sorted({r for s in idx.values() for r in range(*s[0].indices(batch_size))})
    if rows != list(range(lo, hi)):
        raise ValueError("this process's devices hold non-contiguous batch rows; build the mesh with "
                         "jaxlm.sharding.make_mesh (processes laid out along 'data').")
    return slice(lo, hi)


def place_batch(batch: Any, mesh: Mesh, mode: str, *, global_rows: int | None = None,
                devices: list | None = None) -> Any:
    """Numpy batch (every leaf ``[rows, ...]``) -> device arrays laid out for the compiled step.

    ``global_rows=None``: ``batch`` is the whole global batch (single-process runs, tests); each process
    keeps only its :func:`local_rows`. ``global_rows=B``: ``batch`` holds only this process's rows
    ``local_rows(B)`` of a global batch of B (the multi-host data path: no host loads the rest) and
    the global array is assembled with :func:`jax.make_array_from_process_local_data`.
    ``devices``: pmap's local devices, for a pmap step (every leaf ``[n_devices, rows / n_devices, ...]``,
    numpy); None for the jit layout (:func:`batch_sharding`), which evaluation uses under pmap too.
    """
    leaves = jax.tree.leaves(batch)
    if not leaves:
        return batch
    rows = np.shape(leaves[0])[0]
    total = rows if global_rows is None else int(global_rows)
    mine = local_rows(total, mesh, mode)
    if global_rows is not None and rows != mine.stop - mine.start:
        raise ValueError(f"this process should load rows {mine.start}:{mine.stop} of each batch of "
                         f"{total} ({mine.stop - mine.start} rows) but got {rows}; use local_rows().")
    take = (lambda x: np.asarray(x)[mine]) if global_rows is None else np.asarray
    validate(mesh, batch_size=total)
    if devices is not None:
        n = len(devices)
        return jax.tree.map(lambda x: np.reshape(take(x), (n, -1, *np.shape(x)[1:])), batch)
    sh = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(jax.tree.map(take, batch), sh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sh, take(x), (total, *np.shape(x)[1:])), batch)
