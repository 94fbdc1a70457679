"""The mesh a run asks for and the checks that the model and batch fit it.

Here because everything else in :mod:`jaxlm.parallel` starts from a mesh: the mesh config is read once
(:func:`mesh_from_config`, :func:`mesh_config_for`) and checked once (:func:`validate`) before any state or
batch is placed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import Mesh

from jaxlm import sharding
from jaxlm.config import ConfigError

log = logging.getLogger(__name__)

MODES = ("jit", "pmap")
GRAD_AXIS = "batch"  # the pmap axis the step's lax.pmean reduces over


def field(cfg: Any, name: str, default: Any) -> Any:
    """``cfg.name`` of a ``MeshConfig``, ``cfg[name]`` of a dict; ``default`` when absent or cfg is None."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def mesh_from_config(mesh_cfg: Any = None, devices=None) -> Mesh:
    """The ``(data, fsdp, tensor)`` mesh a mesh config (``MeshConfig`` or a dict; None = all devices on
    ``data``) asks for. Raises ValueError naming the fix when the sizes do not match the device count."""
    if mesh_cfg is None:
        return sharding.make_mesh(-1, 1, 1, devices)
    return sharding.make_mesh(
        field(mesh_cfg, "data", 1), field(mesh_cfg, "fsdp", 1), field(mesh_cfg, "tensor", 1), devices,
        context=field(mesh_cfg, "context", 1),
    )


def mesh_config_for(mesh_cfg: Any, mode: str) -> Any:
    """``mesh_cfg``, except that under pmap a config that leaves every axis at 1 means every device on
    ``data`` (pmap over every device unless told otherwise)."""
    if mode == "pmap" and mesh_cfg is not None and all(
            field(mesh_cfg, axis, 1) == 1 for axis in ("data", "fsdp", "tensor", "context")):
        return {"data": -1}
    return mesh_cfg


def local_devices(mesh: Mesh) -> list:
    """The mesh's devices in this process: what pmap maps over (processes run side by side, multi-host)."""
    return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def validate(mesh: Mesh, *, model_cfg: Any = None, batch_size: int | None = None, mode: str = "jit",
             seq_len: int | None = None) -> None:
    """Check that ``model_cfg`` and the global ``batch_size`` fit ``mesh``; raise ConfigError naming the fix.

    - the batch must split evenly over the data-parallel size (``data x fsdp``; all devices under pmap)
      and over the processes (each loads its own rows);
    - ``mesh.tensor`` must divide ``n_heads`` (tensor parallelism splits attention by heads). Key/value
      heads that ``mesh.tensor`` does not divide (multi-query / grouped-query attention) are replicated,
      with a log line, as are other dimensions that do not divide their mesh axes;
    - pmap is data parallel only: ``mesh.fsdp``, ``mesh.tensor`` and ``mesh.context`` must be 1;
    - ``mesh.context`` must divide ``seq_len`` (each device holds ``seq_len / context`` tokens of every row).
    """
    if mode not in MODES:
        raise ConfigError(f"mesh.parallel={mode!r} is not one of {list(MODES)}.")
    shape = sharding.mesh_shape(mesh)
    _check_mode(shape, mode, seq_len)
    if batch_size is not None:
        _check_batch(shape, batch_size)
    if model_cfg is not None and shape["tensor"] > 1:
        _check_heads(mesh, shape["tensor"], model_cfg)


def _check_mode(shape: dict, mode: str, seq_len: int | None) -> None:
    """pmap shards nothing but the batch; the context axis must divide the sequence."""
    if shape["context"] > 1:
        from jaxlm.nn import context as ctx

        if mode == "pmap":
            raise ConfigError(f"mesh.context={shape['context']} needs mesh.parallel=jit (pmap is data parallel "
                              f"only).")
        if seq_len is not None:
            ctx.check_divides(seq_len, shape["context"])
    if mode == "pmap" and (shape["fsdp"] > 1 or shape["tensor"] > 1):
        raise ConfigError(
            f"mesh.parallel='pmap' is data parallel only, but the mesh has fsdp={shape['fsdp']} and "
            f"tensor={shape['tensor']}: set mesh.fsdp=1 mesh.tensor=1 (and mesh.data=-1), or use "
            f"mesh.parallel=jit for FSDP / tensor parallelism."
        )


def _check_batch(shape: dict, batch_size: int) -> None:
    """The global batch splits evenly over ``data x fsdp`` and over the processes."""
    dp = shape["data"] * shape["fsdp"]
    if batch_size % dp:
        ok = dp * max(1, round(batch_size / dp))
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by the data-parallel size "
            f"mesh.data x mesh.fsdp = {shape['data']} x {shape['fsdp']} = {dp}: use a multiple of {dp} "
            f"(e.g. train.batch_size={ok}) or change the mesh so data x fsdp divides {batch_size}."
        )
    if batch_size % jax.process_count():
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by the {jax.process_count()} processes: "
            f"each process loads an equal share; use a multiple of {jax.process_count()}."
        )


def _check_heads(mesh: Mesh, t: int, model_cfg: Any) -> None:
    """``mesh.tensor = t`` divides the attention heads (an error) and the key/value heads (a log line)."""
    h = int(model_cfg.n_heads)
    if h % t:
        ok = [d for d in _divisors(h) if mesh.size % d == 0]
        raise ConfigError(
            f"mesh.tensor={t} does not divide model.n_heads={h}: tensor parallelism splits attention "
            f"by heads. Use mesh.tensor in {ok} (move the other devices to mesh.data or mesh.fsdp)."
        )
    g = int(getattr(model_cfg, "kv_heads", h))
    if g % t:
        log.warning("mesh.tensor=%d does not divide the %d key/value heads: k/v projections and the KV "
                    "cache are replicated over 'tensor' (usual for multi-query attention)", t, g)


def describe_devices() -> str:
    """One line: processes, local/global devices and platform (for start-up logs)."""
    return (f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
            f"{jax.device_count()} {jax.devices()[0].platform} devices")
