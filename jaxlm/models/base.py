"""The config fields every family shares, their validation, and the preset record."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import jax.numpy as jnp

from jaxlm.config import ConfigError, check_choice, closest
from jaxlm.nn import attention, ffn, norms, positions, stack

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shared fields (names are the same in every family; defaults are overridden per family).

    Frozen, hence hashable and usable as a static argument under ``jax.jit``.
    """

    family: ClassVar[str] = "base"

    vocab_size: int
    max_len: int
    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int
    n_kv_heads: int | None = None  # None = n_heads (multi-head); 1 = multi-query; else grouped-query
    d_head: int | None = None  # None = d_model // n_heads
    dropout: float = 0.1
    attn_dropout: float = 0.1
    ffn_dropout: float = 0.0
    activation: str = "gelu"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_position: str = "pre"
    pos_emb: str = "learned"
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    use_bias: bool = True
    embed_scale: bool = False  # multiply token embeddings by sqrt(d_model) (Vaswani §3.4)
    final_norm: bool = True
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    init: str = "normal"  # "normal" (init_std) or "xavier"
    init_std: float = 0.02
    scale_residual_init: bool = False  # GPT-2: output projections scaled by 1/sqrt(2 * n_layers)
    attn_impl: str = "reference"
    remat: str = "none"
    scan_layers: bool = True
    pad_id: int = 0

    # ----------------------------------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads if self.d_head is None else self.d_head

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def __post_init__(self) -> None:
        name = f"{type(self).family}.{type(self).__name__}"  # e.g. "gpt2.Config": says which family
        for f in ("vocab_size", "max_len", "d_model", "n_heads", "n_layers", "d_ff"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{name}.{f}={v!r} must be a positive integer.")
        if self.d_head is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"{name}: d_model={self.d_model} is not divisible by n_heads={self.n_heads}; pick n_heads "
                f"dividing d_model (e.g. {_divisor_near(self.d_model, self.n_heads)}) or set d_head."
            )
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            raise ConfigError(
                f"{name}: n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}; "
                f"n_kv_heads must divide n_heads (e.g. {_divisor_near(self.n_heads, self.n_kv_heads or 1)})."
            )
        if self.d_head is not None and (not isinstance(self.d_head, int) or self.d_head <= 0):
            raise ConfigError(f"{name}.d_head={self.d_head!r} must be a positive integer (or None for "
                              f"d_model // n_heads).")
        for f in ("norm_eps", "rope_theta", "init_std"):
            if not getattr(self, f) > 0:
                raise ConfigError(f"{name}.{f}={getattr(self, f)!r} must be positive.")
        for f in ("dropout", "attn_dropout", "ffn_dropout"):
            v = getattr(self, f)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"{name}.{f}={v} must be in [0, 1).")
        check_choice(f"{name}.activation", self.activation, ffn.ALL)
        check_choice(f"{name}.norm", self.norm, norms.NORMS)
        check_choice(f"{name}.norm_position", self.norm_position, ("pre", "post"))
        check_choice(f"{name}.pos_emb", self.pos_emb, positions.POS_EMB)
        check_choice(f"{name}.dtype", self.dtype, DTYPES)
        check_choice(f"{name}.param_dtype", self.param_dtype, DTYPES)
        check_choice(f"{name}.init", self.init, ("normal", "xavier"))
        check_choice(f"{name}.attn_impl", self.attn_impl, attention.IMPLS)
        check_choice(f"{name}.remat", self.remat, stack.REMAT_POLICIES)
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ConfigError(f"{name}: RoPE needs an even head_dim, got {self.head_dim}.")
        if self.pos_emb == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"{name}: sinusoidal positions need an even d_model, got {self.d_model}.")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ConfigError(f"{name}.pad_id={self.pad_id} must be in [0, vocab_size={self.vocab_size}).")

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)


def _divisor_near(n: int, k: int) -> int:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return min(divs, key=lambda d: (abs(d - k), d))


@dataclass(frozen=True)
class Preset:
    """A named, cited configuration and its exact parameter count (as computed from the spec)."""

    config: ModelConfig
    citation: str
    n_params: int | None = None  # exact count of the preset's spec; asserted in tests
    note: str = ""


def lookup(table: dict, name: str, what: str = "preset"):
    if name not in table:
        raise KeyError(f"unknown {what} {name!r}{closest(name, table)}; known: {sorted(table)}.")
    return table[name]
