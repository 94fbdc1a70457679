"""LayerNorm (with or without bias), RMSNorm and Gemma's ``(1 + w)`` RMSNorm; statistics computed in float32.

Functions take a :class:`NormConfig` (or any config whose ``norm_cfg`` property returns one)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxlm.params import Param, ones, zeros

# "rmsnorm_1p": RMSNorm whose stored scale w is an offset from one, x / rms(x) * (1 + w), with w initialised
# to zeros (Gemma 1/2; transformers' GemmaRMSNorm multiplies in float32 before casting back, as we do)
NORMS = ("layernorm", "layernorm_nobias", "rmsnorm", "rmsnorm_1p")


@dataclass(frozen=True, kw_only=True)
class NormConfig:
    """What a norm reads: which one (:data:`NORMS`), its width, epsilon and parameter dtype."""

    kind: str = "layernorm"
    dim: int
    eps: float = 1e-5
    param_dtype: str = "float32"


def config(cfg) -> NormConfig:
    """``cfg`` itself when it is a :class:`NormConfig`, else its ``norm_cfg``."""
    return cfg if isinstance(cfg, NormConfig) else cfg.norm_cfg


def spec(cfg, dim: int | None = None) -> dict:
    """``{"scale": [D]}`` plus ``{"bias": [D]}`` for ``kind == "layernorm"`` (D = ``dim`` or the config's).
    ``rmsnorm_1p`` stores the offset from one, so its scale starts at zeros."""
    c = config(cfg)
    d = dim or c.dim
    dt = jnp.dtype(c.param_dtype)
    p = {"scale": Param((d,), ("embed",), zeros if c.kind == "rmsnorm_1p" else ones, dt)}
    if c.kind == "layernorm":
        p["bias"] = Param((d,), ("embed",), zeros, dt)
    return p


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array | None, eps: float) -> jax.Array:
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, offset: float = 0.0,
             axis: int | tuple[int, ...] = -1) -> jax.Array:
    """x / sqrt(mean(x^2) + eps) * (offset + scale) over the last axis (Zhang & Sennrich, 2019); Gemma's
    norm is ``offset=1`` (the product is taken in float32 and cast back once, as transformers does).
    ``axis`` may name several trailing axes (OLMo 2's QK-norm over all heads of a projection, [..., H, K]);
    ``scale`` broadcasts against them."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.square(xf).mean(axis, keepdims=True) + eps)
    return (y * (offset + scale.astype(jnp.float32))).astype(x.dtype)


def apply(p: dict, x: jax.Array, cfg) -> jax.Array:
    """Normalise ``x`` [..., D] with the configured norm and epsilon."""
    c = config(cfg)
    if c.kind == "rmsnorm":
        return rms_norm(x, p["scale"], c.eps)
    if c.kind == "rmsnorm_1p":
        return rms_norm(x, p["scale"], c.eps, offset=1.0)
    return layer_norm(x, p["scale"], p.get("bias"), c.eps)
