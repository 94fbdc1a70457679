"""Position-wise feed-forward networks: ReLU (Vaswani), GELU exact (BERT) / tanh (GPT-2), and the gated
variants SwiGLU (LLaMA) and GeGLU (Shazeer, 2020)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.nn import linear

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}
GATED = {"swiglu": jax.nn.silu, "geglu": lambda x: jax.nn.gelu(x, approximate=False),
         "geglu_tanh": lambda x: jax.nn.gelu(x, approximate=True)}
ALL = tuple(ACTIVATIONS) + tuple(GATED)


def spec(cfg) -> dict:
    """Plain: ``wi`` [D, F], ``wo`` [F, D]. Gated: ``wi_0`` (gate) and ``wi_1`` (up) [D, F], ``wo`` [F, D]."""
    D, F = cfg.d_model, cfg.d_ff
    out_scale = (2 * cfg.n_layers) ** -0.5 if getattr(cfg, "scale_residual_init", False) else 1.0
    wo = linear.spec(cfg, (F,), (D,), ("mlp",), ("embed",), scale=out_scale)
    if cfg.activation in GATED:
        return {"wi_0": linear.spec(cfg, (D,), (F,), ("embed",), ("mlp",)),
                "wi_1": linear.spec(cfg, (D,), (F,), ("embed",), ("mlp",)), "wo": wo}
    return {"wi": linear.spec(cfg, (D,), (F,), ("embed",), ("mlp",)), "wo": wo}


def apply(p: dict, x: jax.Array, cfg, *, key: jax.Array | None = None) -> jax.Array:
    """``x`` [B, T, D] -> act(x Wi) Wo [B, T, D]; gated: (act(x W0) * x W1) Wo."""
    dt = jnp.dtype(cfg.dtype)
    if cfg.activation in GATED:
        h = GATED[cfg.activation](linear.apply(p["wi_0"], x, "BTD,DF->BTF", dt)) * linear.apply(
            p["wi_1"], x, "BTD,DF->BTF", dt)
    else:
        h = ACTIVATIONS[cfg.activation](linear.apply(p["wi"], x, "BTD,DF->BTF", dt))  # [B, T, F]
    if key is not None and getattr(cfg, "ffn_dropout", 0.0) > 0:
        h = dropout(h, cfg.ffn_dropout, key)
    return linear.apply(p["wo"], h, "BTF,FD->BTD", dt)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when ``key`` is None or ``rate`` is 0."""
    if key is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)
