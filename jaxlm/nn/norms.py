"""LayerNorm (with or without bias) and RMSNorm; statistics computed in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.params import Param, ones, zeros

NORMS = ("layernorm", "layernorm_nobias", "rmsnorm")


def spec(cfg, dim: int | None = None) -> dict:
    """``{"scale": [D]}`` plus ``{"bias": [D]}`` for ``cfg.norm == "layernorm"``."""
    d = dim or cfg.d_model
    dt = jnp.dtype(cfg.param_dtype)
    p = {"scale": Param((d,), ("embed",), ones, dt)}
    if cfg.norm == "layernorm":
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


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """x / sqrt(mean(x^2) + eps) * scale over the last axis (Zhang & Sennrich, 2019)."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + eps)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


def apply(p: dict, x: jax.Array, cfg) -> jax.Array:
    """Normalise ``x`` [..., D] with ``cfg.norm`` and ``cfg.norm_eps``."""
    if cfg.norm == "rmsnorm":
        return rms_norm(x, p["scale"], cfg.norm_eps)
    return layer_norm(x, p["scale"], p.get("bias"), cfg.norm_eps)
