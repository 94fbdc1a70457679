"""What every family shares: the base Config and its validation, the preset record, the family contract
(:func:`check_family`) and the :class:`Loaded` record of a model with its weights."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

import jax.numpy as jnp

from jaxlm.config import ConfigError, check_choice, closest
from jaxlm.nn import attention, blocks, ffn, norms, positions, stack

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shared fields (names are the same in every family; defaults are overridden per family).

    Frozen, hence hashable and usable as a static argument under ``jax.jit``.
    """

    family: ClassVar[str] = "base"
    # fields this family's code never reads: they must keep their defaults (an override is an error that
    # lists the fields the family does use)
    unused: ClassVar[tuple[str, ...]] = ()

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
    post_norms: bool = False  # also normalise each sub-block's output before the residual sum (Gemma 2)
    final_logit_softcap: float | None = None  # logits -> cap * tanh(logits / cap) (Gemma 2: 30)
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    init: str = "normal"  # "normal" (init_std) or "xavier"
    init_std: float = 0.02
    scale_residual_init: bool = False  # GPT-2: output projections scaled by 1/sqrt(2 * n_layers)
    attn_impl: str = "auto"  # by platform: reference on CPU, flash on TPU, cuDNN on GPU (nn/attention.py)
    remat: str = "auto"  # by platform: dots_no_batch on CPU, none on TPU/GPU (nn/stack.py)
    scan_layers: bool = True
    pad_id: int = 0
    # attention variants of today's checkpoints (jaxlm.nn.attention's module docstring); defaults = off
    sliding_window: int | None = None  # W: local layers see keys j > i - W (Mistral 4096, GPT-Neo 256)
    attn_pattern: tuple[str, ...] = ("local",)  # per-layer "local"/"global", cycled over the layers
    attn_scale: float | None = None  # multiplies q.k; None = head_dim ** -0.5 (GPT-Neo: 1.0)
    attn_softcap: float | None = None  # attention scores -> c * tanh(s / c) (Gemma 2: 50)
    qkv_bias: bool | None = None  # biases on q/k/v; None = use_bias (Qwen2: True with use_bias=False)
    rope_type: str = "default"  # "default", "linear" or "llama3" (Llama 3.1)
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192  # transformers' original_max_position_embeddings

    # ----------------------------------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads if self.d_head is None else self.d_head

    @property
    def local_layers(self) -> tuple[bool, ...]:
        """Per layer: does it use sliding-window attention (``attn_pattern`` cycled; none without a window)."""
        if self.sliding_window is None:
            return (False,) * self.n_layers
        pat = self.attn_pattern
        return tuple(pat[i % len(pat)] == "local" for i in range(self.n_layers))

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    # the narrow configs of the building blocks (jaxlm.nn takes only what it uses)
    @property
    def attn_cfg(self) -> attention.AttentionConfig:
        return attention.AttentionConfig(
            d_model=self.d_model, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.d_head,
            dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias, init=self.init,
            init_std=self.init_std, out_scale=self._out_scale, pos_emb=self.pos_emb, rope_theta=self.rope_theta,
            dropout=self.attn_dropout, impl=self.attn_impl, scale=self.attn_scale, softcap=self.attn_softcap,
            qkv_bias=self.qkv_bias, rope_type=self.rope_type, rope_factor=self.rope_factor,
            rope_low_freq_factor=self.rope_low_freq_factor, rope_high_freq_factor=self.rope_high_freq_factor,
            rope_original_max_len=self.rope_original_max_len)

    @property
    def ffn_cfg(self) -> ffn.FFNConfig:
        return ffn.FFNConfig(d_model=self.d_model, d_ff=self.d_ff, activation=self.activation, dtype=self.dtype,
                             param_dtype=self.param_dtype, use_bias=self.use_bias, init=self.init,
                             init_std=self.init_std, out_scale=self._out_scale, dropout=self.ffn_dropout)

    @property
    def norm_cfg(self) -> norms.NormConfig:
        return norms.NormConfig(kind=self.norm, dim=self.d_model, eps=self.norm_eps, param_dtype=self.param_dtype)

    @property
    def block_cfg(self) -> blocks.BlockConfig:
        return blocks.BlockConfig(attn=self.attn_cfg, ffn=self.ffn_cfg, norm=self.norm_cfg,
                                  norm_position=self.norm_position, dropout=self.dropout,
                                  post_norms=self.post_norms)

    @property
    def _out_scale(self) -> float:
        # GPT-2 scales the residual output projections' init by 1/sqrt(2 * n_layers)
        return (2 * self.n_layers) ** -0.5 if self.scale_residual_init else 1.0

    @property
    def embed_std(self) -> float:
        """Init std of the token (and position) tables: ``init_std``, or d_model^-0.5 with Xavier init."""
        return self.init_std if self.init == "normal" else self.d_model**-0.5

    @classmethod
    def used_fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name not in cls.unused]

    def __post_init__(self) -> None:
        name = f"{type(self).family}.{type(self).__name__}"  # e.g. "gpt2.Config": says which family
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = [f for f in type(self).unused if getattr(self, f) != defaults[f]]
        if changed:
            raise ConfigError(
                f"{name} does not use {', '.join(changed)} (set to "
                f"{', '.join(repr(getattr(self, f)) for f in changed)}); the {type(self).family} family's "
                f"fields are: {', '.join(type(self).used_fields())}.")
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
            v = getattr(self, f)
            # `not v > 0` also rejects NaN; inf is rejected separately (it makes every output NaN)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0 or math.isinf(v):
                raise ConfigError(f"{name}.{f}={v!r} must be positive and finite (the default is "
                                  f"{defaults[f]!r}).")
        # every family's dropout rates (classifier_dropout may be None: "same as dropout") and token ids
        # (pad_id, bos_id, eos_id, ...), wherever the family declares them
        for f in (f.name for f in dataclasses.fields(self)):
            v = getattr(self, f)
            if f.endswith("dropout") and v is not None and (
                    isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= v < 1.0):
                raise ConfigError(f"{name}.{f}={v!r} must be in [0, 1) (the probability of dropping a unit; "
                                  f"0 = off).")
            if f.endswith("_id") and f != "pad_id" and v is not None and (
                    isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v < self.vocab_size):
                raise ConfigError(f"{name}.{f}={v!r} must be in [0, vocab_size={self.vocab_size}): an integer, "
                                  f"the tokenizer's id of that special token.")
        cap = self.final_logit_softcap
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, numbers.Real) or not cap > 0
                                or math.isinf(cap)):
            raise ConfigError(f"{name}.final_logit_softcap={cap!r} must be a positive finite number (Gemma 2 uses "
                              f"30.0) or None for no capping.")
        if self.post_norms and self.norm_position != "pre":
            raise ConfigError(f"{name}: post_norms=True (a norm on each sub-block's output, Gemma 2) needs "
                              f"norm_position='pre', got {self.norm_position!r}.")
        check_choice(f"{name}.activation", self.activation, ffn.ALL)
        check_choice(f"{name}.norm", self.norm, norms.NORMS)
        check_choice(f"{name}.norm_position", self.norm_position, ("pre", "post"))
        check_choice(f"{name}.pos_emb", self.pos_emb, positions.POS_EMB)
        check_choice(f"{name}.dtype", self.dtype, DTYPES)
        check_choice(f"{name}.param_dtype", self.param_dtype, DTYPES)
        check_choice(f"{name}.init", self.init, ("normal", "xavier"))
        check_choice(f"{name}.attn_impl", self.attn_impl, attention.IMPLS)
        check_choice(f"{name}.remat", self.remat, ("auto", *stack.REMAT_POLICIES))
        self._check_attention_variants(name)
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ConfigError(f"{name}: RoPE needs an even head_dim, got {self.head_dim}.")
        if self.pos_emb == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"{name}: sinusoidal positions need an even d_model, got {self.d_model}.")
        pad = self.pad_id
        if isinstance(pad, bool) or not isinstance(pad, numbers.Integral) or not 0 <= pad < self.vocab_size:
            raise ConfigError(f"{name}.pad_id={pad!r} must be in [0, vocab_size={self.vocab_size}): an integer, "
                              f"the tokenizer's <pad> id (usually 0).")

    def _check_attention_variants(self, name: str) -> None:
        w = self.sliding_window
        if w is not None and (isinstance(w, bool) or not isinstance(w, numbers.Integral) or not 0 < w <= self.max_len):
            raise ConfigError(f"{name}.sliding_window={w!r} must be an integer in [1, max_len={self.max_len}] (the "
                              f"number of keys a local layer sees, itself included), or None for full attention.")
        pat = self.attn_pattern
        if (not isinstance(pat, tuple) or not pat or len(pat) > self.n_layers
                or any(k not in ("local", "global") for k in pat)):
            raise ConfigError(f"{name}.attn_pattern={pat!r} must be a non-empty tuple of 'local'/'global' of at "
                              f"most n_layers={self.n_layers} entries, cycled over the layers (e.g. ('local', "
                              f"'global') alternates starting local).")
        for f in ("attn_scale", "attn_softcap"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0
                                  or math.isinf(v)):
                raise ConfigError(f"{name}.{f}={v!r} must be positive and finite, or None (off).")
        check_choice(f"{name}.rope_type", self.rope_type, positions.ROPE_TYPES)
        if self.rope_type != "default":
            if self.pos_emb != "rope":
                raise ConfigError(f"{name}.rope_type={self.rope_type!r} scales RoPE, but pos_emb={self.pos_emb!r}.")
            for f in ("rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_len"):
                v = getattr(self, f)
                if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0 or math.isinf(v):
                    raise ConfigError(f"{name}.{f}={v!r} must be positive and finite.")
            if self.rope_type == "llama3" and not self.rope_high_freq_factor > self.rope_low_freq_factor:
                raise ConfigError(f"{name}: llama3 RoPE scaling needs rope_high_freq_factor "
                                  f"({self.rope_high_freq_factor}) > rope_low_freq_factor ({self.rope_low_freq_factor}).")

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


# ----------------------------------------------------------------------------------------------------------
# The family contract: what a family module declares so that training, generation, conversion and the CLI
# need no per-family code (docs/architecture.md, "Adding a model family").
KINDS = ("decoder", "encoder", "encoder-decoder")
TASKS = ("causal_lm", "mlm", "seq2seq", "classification", "span", "span_corruption")

# name -> what it is; every family module must define all of these
REQUIRED = {
    "Config": "the frozen Config dataclass (a ModelConfig subclass with `family: ClassVar[str]`)",
    "PRESETS": "dict preset name -> Preset",
    "KIND": f"one of {KINDS}",
    "TASKS": f"tuple of the training tasks it supports, from {TASKS}; the first is the one it pretrains "
             "with (what `jaxlm plan PRESET` plans)",
    "HF": "its Hugging Face mapping (jaxlm.models.hfmap.HFMapping), or None when it has no HF counterpart",
    "spec": "spec(cfg) -> tree of Param",
    "init": "init(key, cfg, mesh=None) -> params",
    "apply": "apply(params, inputs..., cfg, ...) -> outputs",
}
# optional: ``active_params(cfg) -> int``, the parameters one token uses when that is fewer than the spec's
# count (a mixture of experts); FLOP/MFU estimates use it (jaxlm.models.active_params)
# extra functions each kind needs (generation and the KV cache)
REQUIRED_BY_KIND = {
    "decoder": {"init_cache": "init_cache(cfg, batch, max_len) -> zeroed KV cache"},
    "encoder": {},
    "encoder-decoder": {"encode": "encode(params, src, cfg, ...) -> encoder output",
                        "decode": "decode(params, tgt, enc, cfg, ...) -> logits",
                        "init_cache": "init_cache(cfg, batch, max_len) -> zeroed self-attention KV cache",
                        "cross_cache": "cross_cache(params, enc, cfg) -> cross-attention keys/values"},
}


class FamilyError(TypeError):
    """A family module does not declare what the library needs from it."""


def check_family(mod: ModuleType) -> ModuleType:
    """Check that ``mod`` declares the family contract (:data:`REQUIRED`); raise :class:`FamilyError`
    naming every missing or malformed piece. Returns ``mod``."""
    name = mod.__name__
    missing = [f"{k} ({v})" for k, v in REQUIRED.items() if not hasattr(mod, k)]
    if missing:
        raise FamilyError(f"family module {name} is missing: {'; '.join(missing)}.")
    problems = []
    if mod.KIND not in KINDS:
        problems.append(f"KIND={mod.KIND!r} is not one of {KINDS}")
    else:
        problems += [f"{k} ({v})" + " is missing" for k, v in REQUIRED_BY_KIND[mod.KIND].items()
                     if not hasattr(mod, k)]
    if not (isinstance(mod.Config, type) and issubclass(mod.Config, ModelConfig)):
        problems.append("Config must be a subclass of jaxlm.models.base.ModelConfig")
    elif mod.Config.family == ModelConfig.family:
        problems.append("Config must set `family: ClassVar[str]` to the family's name")
    bad_tasks = [t for t in mod.TASKS if t not in TASKS]
    if bad_tasks or not isinstance(mod.TASKS, tuple):
        problems.append(f"TASKS must be a tuple drawn from {TASKS} (got {mod.TASKS!r})")
    if not isinstance(mod.PRESETS, dict) or not all(isinstance(p, Preset) for p in mod.PRESETS.values()):
        problems.append("PRESETS must be a dict of name -> Preset")
    if problems:
        raise FamilyError(f"family module {name}: {'; '.join(problems)}.")
    return mod


@dataclass
class Loaded:
    """A model with its weights, from wherever it was loaded (see :func:`jaxlm.pretrained.load`)."""

    family: ModuleType  # e.g. jaxlm.models.gpt2
    config: Any  # the family's frozen Config
    params: dict
    tokenizer: Any | None = None  # tokenizers.Tokenizer
    source: str = ""
    extra: dict | None = None  # e.g. chat template, special token ids
