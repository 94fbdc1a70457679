"""Position-wise feed-forward networks: ReLU (Vaswani), GELU exact (BERT) / tanh (GPT-2), and the gated
variants SwiGLU (LLaMA) and GeGLU (Shazeer, 2020).

Functions take an :class:`FFNConfig` (or any config whose ``ffn_cfg`` property returns one)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True, kw_only=True)
class FFNConfig:
    """What the feed-forward block reads."""

    d_model: int
    d_ff: int
    activation: str = "gelu"  # one of ALL
    dtype: str = "float32"
    param_dtype: str = "float32"
    use_bias: bool = True
    init: str = "normal"  # "normal" (init_std) or "xavier"
    init_std: float = 0.02
    out_scale: float = 1.0  # multiplies the output projection's init std (GPT-2: 1/sqrt(2 L))
    dropout: float = 0.0  # on the hidden activations


def config(cfg) -> FFNConfig:
    """``cfg`` itself when it is an :class:`FFNConfig`, else its ``ffn_cfg``."""
    return cfg if isinstance(cfg, FFNConfig) else cfg.ffn_cfg


def spec(cfg) -> dict:
    """Plain: ``wi`` [D, F], ``wo`` [F, D]. Gated: ``wi_0`` (gate) and ``wi_1`` (up) [D, F], ``wo`` [F, D]."""
    c = config(cfg)
    D, F = c.d_model, c.d_ff
    wo = linear.spec(c, (F,), (D,), ("mlp",), ("embed",), scale=c.out_scale)
    if c.activation in GATED:
        return {"wi_0": linear.spec(c, (D,), (F,), ("embed",), ("mlp",)),
                "wi_1": linear.spec(c, (D,), (F,), ("embed",), ("mlp",)), "wo": wo}
    return {"wi": linear.spec(c, (D,), (F,), ("embed",), ("mlp",)), "wo": wo}


def apply(p: dict, x: jax.Array, cfg, *, key: jax.Array | None = None) -> jax.Array:
    """``x`` [B, T, D] -> act(x Wi) Wo [B, T, D]; gated: (act(x W0) * x W1) Wo."""
    c = config(cfg)
    dt = jnp.dtype(c.dtype)
    if c.activation in GATED:
        h = GATED[c.activation](linear.apply(p["wi_0"], x, "BTD,DF->BTF", dt)) * linear.apply(
            p["wi_1"], x, "BTD,DF->BTF", dt)
    else:
        h = ACTIVATIONS[c.activation](linear.apply(p["wi"], x, "BTD,DF->BTF", dt))  # [B, T, F]
    if key is not None and c.dropout > 0:
        h = dropout(h, c.dropout, key)
    return linear.apply(p["wo"], h, "BTF,FD->BTD", dt)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when ``key`` is None or ``rate`` is 0."""
    if key is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)
