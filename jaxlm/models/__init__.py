"""The zoo. Each family is one module that declares the family contract (:func:`base.check_family`);
``FAMILIES`` lists them (one line adds a family), ``REGISTRY`` maps every preset name to (module, Preset)
and :func:`get` resolves a name."""

from __future__ import annotations

from types import ModuleType

from jaxlm import params as P
from jaxlm.models import (
    bert,
    gemma,
    gemma2,
    gpt2,
    gpt3,
    llama,
    mistral,
    mixtral,
    olmo2,
    phi3,
    qwen2,
    qwen3,
    t5,
    transformer,
)
from jaxlm.models.base import FamilyError, Loaded, ModelConfig, Preset, check_family, lookup


def _register(*modules: ModuleType) -> dict[str, ModuleType]:
    out: dict[str, ModuleType] = {}
    for mod in modules:
        check_family(mod)
        name = mod.Config.family
        if name in out:
            raise FamilyError(f"two family modules declare the name {name!r}: {out[name].__name__} and {mod.__name__}.")
        out[name] = mod
    return out


FAMILIES: dict[str, ModuleType] = _register(transformer, gpt2, bert, llama, qwen2, mistral, gemma, gemma2, phi3,
                                            gpt3, t5, mixtral, qwen3, olmo2)

REGISTRY: dict[str, tuple[ModuleType, Preset]] = {
    name: (mod, preset) for mod in FAMILIES.values() for name, preset in mod.PRESETS.items()
}


def get(name: str) -> tuple[ModuleType, ModelConfig]:
    """Preset name -> (family module, Config). Unknown names raise a KeyError naming the closest."""
    mod, preset = lookup(REGISTRY, name)
    return mod, preset.config


def active_params(cfg: ModelConfig, n_params: int | None = None) -> int:
    """Parameters one token uses (what FLOP and MFU estimates count): ``n_params`` (default: the spec's count)
    less what the family's optional ``active_params(cfg)`` says a token skips (a mixture of experts uses
    top_k of n_experts experts); all of them for dense families."""
    mod = family_of(cfg)
    total = P.count(mod.spec(cfg))
    n = total if n_params is None else n_params
    return n - (total - mod.active_params(cfg)) if hasattr(mod, "active_params") else n


def family_of(cfg: ModelConfig) -> ModuleType:
    """The family module a Config belongs to."""
    return FAMILIES[type(cfg).family]


__all__ = ["FAMILIES", "REGISTRY", "get", "family_of", "active_params", "Loaded", "ModelConfig", "Preset", "bert",
           "gpt2", "llama", "mistral", "mixtral", "olmo2", "qwen2", "qwen3", "t5",
           "transformer"]
