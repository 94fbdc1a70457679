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
    if "lora_a" in p:  # a LoRA adapter (jaxlm.finetune.lora); over a quantized W this is QLoRA
        y = y + _low_rank(p, x.astype(dtype), eq, dtype)
    if "b" in p:
        y = y + p["b"].astype(dtype)
    return y


def _low_rank(p: dict, x: jax.Array, eq: str, dtype) -> jax.Array:
    """A LoRA adapter's term ``((dropout(x) @ A) @ B)``, same output shape as ``einsum(eq, x, w)``.

    ``p["lora_a"]`` is ``[*in, r]`` (``in``: the dims of ``w`` that ``eq`` contracts with ``x``),
    ``p["lora_b"]`` ``[r, *out]`` with the scale ``alpha / r`` already folded in
    (:func:`jaxlm.finetune.lora.combine`); optional ``lora_key`` (raw key data) and ``lora_rate`` (a float
    scalar) drop inputs of the low-rank path. Two thin einsums: the ``[*in, *out]`` delta is never formed."""
    xs, rest = eq.split(",")
    ws, ys = rest.split("->")
    n_in = sum(c in xs for c in ws)
    if any(c not in xs for c in ws[:n_in]) or p["lora_a"].ndim != n_in + 1:
        raise ValueError(f"LoRA adapter of shape {p['lora_a'].shape} does not fit the projection {eq!r}: A must "
                         f"be [*contracted dims, rank]; rebuild the adapters with jaxlm.finetune.lora.")
    r = next(c for c in "RZYXWVUQPONMLJIGE" if c not in eq)  # a letter free for the rank axis
    keep_x = "".join(c for c in xs if c not in ws)
    if "lora_key" in p:  # LoRA dropout (Hu et al. 2021 apply it to the adapter's input only)
        keep = 1.0 - p["lora_rate"].astype(jnp.float32)
        mask = jax.random.bernoulli(jax.random.wrap_key_data(p["lora_key"]), keep, x.shape)
        x = jnp.where(mask, x / keep.astype(dtype), jnp.zeros((), dtype))
    h = jnp.einsum(f"{xs},{ws[:n_in]}{r}->{keep_x}{r}", x, p["lora_a"].astype(dtype))  # [..., r]
    return jnp.einsum(f"{keep_x}{r},{r}{ws[n_in:]}->{ys}", h, p["lora_b"].astype(dtype))


def fan_in(shape: Sequence[int], in_dims: int) -> int:
    return math.prod(shape[:in_dims])
