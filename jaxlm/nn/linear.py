"""Dense projections written as einsums over named axes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxlm.nn import quant
from jaxlm.params import Param, normal, xavier_uniform, zeros


def kernel_init(cfg, in_dims: int, shape: Sequence[int], scale: float = 1.0):
    """The kernel initialiser ``cfg.init`` names: ``normal(cfg.init_std * scale)`` or Xavier-uniform.

    ``cfg`` here and in :func:`spec` is any config with ``param_dtype``, ``init``, ``init_std`` and
    ``use_bias`` (the attention and feed-forward configs, or a model Config)."""
    if cfg.init == "xavier":
        return xavier_uniform(tuple(range(in_dims)), tuple(range(in_dims, len(shape))))
    return normal(cfg.init_std * scale)


def spec(
    cfg,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    in_axes: Sequence[str | None],
    out_axes: Sequence[str | None],
    *,
    bias: bool | None = None,
    scale: float = 1.0,
) -> dict:
    """``{"w": [*in, *out]}`` plus ``{"b": [*out]}`` when ``bias`` (default ``cfg.use_bias``)."""
    shape = (*in_shape, *out_shape)
    dt = jnp.dtype(cfg.param_dtype)
    p = {"w": Param(shape, (*in_axes, *out_axes), kernel_init(cfg, len(in_shape), shape, scale), dt)}
    if cfg.use_bias if bias is None else bias:
        p["b"] = Param(tuple(out_shape), tuple(out_axes), zeros, dt)
    return p


def apply(p: dict, x: jax.Array, eq: str, dtype=None) -> jax.Array:
    """``einsum(eq, x, w) + b`` in ``dtype`` (default x.dtype); e.g. ``eq="BTD,DHK->BTHK"``."""
    dtype = dtype or x.dtype
    if isinstance(p["w"], quant.QArray):  # weight-only quantized (jaxlm.nn.quant)
        y = quant.einsum(eq, x, p["w"], dtype)
    else:
        y = jnp.einsum(eq, x.astype(dtype), p["w"].astype(dtype))
    if "b" in p:
        y = y + p["b"].astype(dtype)
    return y


def fan_in(shape: Sequence[int], in_dims: int) -> int:
    return math.prod(shape[:in_dims])
