"""How a family corresponds to Hugging Face ``transformers`` checkpoints (and llama.cpp GGUF files).

A family module declares ``HF = hfmap.HFMapping(...)`` (or ``HF = None`` when it has no HF counterpart).
:mod:`jaxlm.convert.hf` and :mod:`jaxlm.convert.gguf` are generic engines driven by these records: adding
a family that converts needs no code in ``jaxlm/convert``.

``config.json`` <-> Config (:class:`HFMapping` fields)

- ``model_types``: ``{model_type: display name}``, the ``config.json`` ``model_type`` values the family
  imports; export keeps the original checkpoint's model_type when it is one of these, else writes the first.
- ``architectures``: ``{model_type: transformers class}`` written as ``architectures`` on export.
- ``fields``: one :class:`Field` per ``config.json`` key: the HF key, the Config field, the default when the
  key is absent (:data:`MISSING`: it must be present), and how values translate (a ``values`` table such as
  :data:`ACTIVATIONS`, or ``read``/``write`` functions for keys that depend on others).
- ``fixed``: Config fields the HF architecture fixes (``norm_position="pre"``, ``pos_emb="rope"``, ...): set
  on import, required on export.
- ``constants``: keys export writes as given (``hidden_act="silu"``).
- ``checks``: functions ``config.json -> problem or None``, for options that change the architecture (the
  problem is reported as "... is not supported"); :func:`only` builds the common "key must be one of" check.
- ``export_checks``: functions ``Config -> problem or None``, for Configs no HF class can hold.
- ``drop``: keys of the original ``config.json`` that export removes because they no longer hold.
- ``read_config(config_json, tensor_names) -> dict``: extra Config fields decided by the checkpoint itself
  (BERT: which heads and whether a pooler, from the tensor names). Optional.
- ``write_config(cfg, config_json) -> config_json``: the last edit of an exported ``config.json`` (BERT: the
  class by head, label maps). Optional.

Tensors <-> params

- ``prefix``: the backbone's name prefix in the task model classes (``"transformer."``, ``"model."``,
  ``"bert."``). Bare backbones (``GPT2Model``, sentence-transformers) save names without it, so import adds it
  to every name that is not a head's (a head is the first component of a rule name outside ``prefix``).
- ``rules``: ``(jaxlm path, HF name, op)``; ``{i}`` in the HF name is the layer index (jaxlm stacks layers along
  a leading axis) and ``{e}`` the expert index (mixture-of-experts weights stacked along the next axis, one
  checkpoint tensor per expert). A rule applies when its jaxlm path is in the Config's spec, so untied heads, biases and
  BERT's optional heads follow from the Config; every spec path needs a rule. ``op`` says how the array is
  re-laid: ``"copy"``; ``"vec"`` (a flat HF bias split into our ``[heads, head_dim]``); ``"linear<n>"`` (a
  torch ``nn.Linear`` ``[out, in]`` whose first ``n`` dims on our side are inputs: jaxlm stores ``[*in, *out]``
  with heads split out, e.g. ``attn/q/w`` [D, H, K] is ``linear1``, ``attn/o/w`` [H, K, D] is ``linear2``);
  ``"conv<n>"`` (GPT-2's ``Conv1D``, already ``[in, out]``).
- ``renames``: substring renames of checkpoint names on import (TF-era ``LayerNorm.gamma``/``beta``).
- ``fused``: :class:`Fused` tensors that hold several of ours side by side (GPT-2's ``c_attn`` = q | k | v;
  Phi-3's ``qkv_proj`` and ``gate_up_proj``, whose parts may differ in size: ``Fused.sizes``).
- ``ignored``: substrings of checkpoint names that carry no parameters (buffers, tied copies); they are not
  reported as unused.
- ``bare``: exported classes whose tensor names have no ``prefix`` (``BertModel``).
- ``gguf``: a :class:`GGUFMapping` when llama.cpp files of the family can be imported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jaxlm.models.base import ModelConfig


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture (or an option of it) has no jaxlm equivalent."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # a Field default: the config.json key must be present

# transformers' activation names (ACT2FN) -> jaxlm's; export writes the first name of each jaxlm activation
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
               "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}

# GGUF's ``tokenizer.ggml.model`` value for byte-level BPE vocabularies (llama.cpp names it after GPT-2's)
GGUF_BYTE_LEVEL_BPE = "gpt2"

Rule = tuple[str, str, str]  # (jaxlm path, HF name with {i} for the layer, op)
Check = Callable[[dict], "str | None"]  # config.json -> problem (None or "" when fine)
ExportCheck = Callable[[Any], "str | None"]  # Config -> problem (None or "" when fine)


@dataclass(frozen=True)
class Field:
    """One ``config.json`` key and the Config field it sets.

    Import: ``value = config_json.get(hf, default)``, translated by ``values`` (HF value -> ours; a value
    outside it is unsupported), then by ``read(value, config_json)``; stored as ``ours`` (``ours=None``: the
    key is written on export only). Export: ``write(cfg)`` if given, else ``getattr(cfg, ours)``, translated
    back through ``values`` (the first HF value naming it); ``export=False`` keys are imported only.
    """

    hf: str
    ours: str | None = None
    default: Any = MISSING
    values: Mapping[Any, Any] | None = None
    read: Callable[[Any, dict], Any] | None = None
    write: Callable[[Any], Any] | None = None
    export: bool = True

    def __post_init__(self) -> None:
        if self.ours is None and self.write is None:
            raise TypeError(f"hfmap.Field({self.hf!r}) sets no Config field and writes nothing: give ours= or write=.")


@dataclass(frozen=True)
class Fused:
    """An HF tensor that concatenates several of the rules' tensors along ``axis``: a checkpoint name
    containing ``hf`` is split into parts named with ``hf`` replaced by each of ``parts`` (import), and
    joined back (export). The parts are equal unless ``sizes(cfg)`` gives their lengths along ``axis`` (Phi-3's
    ``qkv_proj`` under grouped-query attention: q is ``n_heads * head_dim`` rows, k and v ``kv_heads *
    head_dim`` each)."""

    hf: str
    parts: tuple[str, ...]
    axis: int = -1
    sizes: Callable[[Any], tuple[int, ...]] | None = None


@dataclass(frozen=True)
class GGUFMetadata:
    """A GGUF file's metadata as a :class:`GGUFMapping` ``config`` function sees it."""

    architecture: str  # general.architecture
    lookup: Callable[[str], Any]  # full key -> value, None when absent
    tensor_names: frozenset[str]
    n_tokens: int | None  # length of tokenizer.ggml.tokens

    def get(self, key: str, default: Any = None) -> Any:
        """The architecture's own key ``"<architecture>.<key>"`` (e.g. ``"llama.block_count"``)."""
        v = self.lookup(f"{self.architecture}.{key}")
        return default if v is None else v


@dataclass(frozen=True)
class GGUFMapping:
    """llama.cpp GGUF files of a family.

    ``architectures``: the ``general.architecture`` values it claims. ``tensors``: GGUF name -> HF name
    (``{i}`` = layer); GGUF tensors not listed are skipped. ``config(meta)``: the HF ``config.json`` the
    metadata describes (special-token ids are added by the engine); it raises
    :class:`UnsupportedModelError` for options jaxlm lacks. ``permuted``: GGUF name -> the Config property
    holding its head count, for tensors whose rows llama.cpp interleaves for GPT-J-style RoPE.
    """

    architectures: tuple[str, ...]
    tensors: Mapping[str, str]
    config: Callable[[GGUFMetadata], dict]
    permuted: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HFMapping:
    """A family's Hugging Face correspondence; the fields are described in the module docstring."""

    model_types: Mapping[str, str]
    architectures: Mapping[str, str]
    fields: tuple[Field, ...]
    prefix: str
    rules: tuple[Rule, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    constants: Mapping[str, Any] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    export_checks: tuple[ExportCheck, ...] = ()
    drop: tuple[str, ...] = ()
    read_config: Callable[[dict, set[str]], dict] | None = None
    write_config: Callable[[Any, dict], dict] | None = None
    renames: Mapping[str, str] = field(default_factory=dict)
    fused: tuple[Fused, ...] = ()
    ignored: tuple[str, ...] = ()
    bare: tuple[str, ...] = ()
    gguf: GGUFMapping | None = None

    def __post_init__(self) -> None:
        if not self.model_types:
            raise TypeError("HFMapping.model_types is empty: name the config.json model_type values it imports.")
        lost = [m for m in self.model_types if m not in self.architectures]
        if lost:
            raise TypeError(f"HFMapping.architectures has no class for model_type {lost}.")
        bad = [r for r in self.rules if len(r) != 3 or not _valid_op(r[2])]
        if bad:
            raise TypeError(f"HFMapping.rules {bad[:3]}: a rule is (jaxlm path, HF name, op) with op 'copy', 'vec', "
                            f"'linear<n>' or 'conv<n>'.")

    def head_prefixes(self) -> tuple[str, ...]:
        """Top-level name prefixes outside the backbone (``"lm_head."``): the first component of each rule
        name that does not start with ``prefix``."""
        return tuple(sorted({hf.split(".", 1)[0] + "." for _, hf, _ in self.rules if not hf.startswith(self.prefix)}))


def _valid_op(op: str) -> bool:
    return re.fullmatch(r"copy|vec|(linear|conv)[1-9]", op) is not None


def only(key: str, allowed: tuple, default: Any, problem: str) -> Check:
    """A check: ``config.json[key]`` (``default`` when absent) must be one of ``allowed``; else ``problem``
    formatted with ``key``, ``value`` and ``model_type``."""

    def check(hc: dict) -> str | None:
        value = hc.get(key, default)
        if value in allowed:
            return None
        return problem.format(key=key, value=value, model_type=hc.get("model_type"))

    check.__name__ = f"only_{key}"
    return check


def plain_attention(cfg: ModelConfig) -> str | None:
    """Export check: HF classes without grouped-query attention need n_kv_heads == n_heads."""
    return None if cfg.n_kv_heads in (None, cfg.n_heads) else "grouped-query attention"


def default_head_dim(cfg: ModelConfig) -> str | None:
    """Export check: HF classes without a head_dim key need d_head == d_model / n_heads."""
    return None if cfg.d_head in (None, cfg.d_model // cfg.n_heads) else "d_head != d_model / n_heads"
