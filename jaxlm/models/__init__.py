"""The zoo. ``REGISTRY`` maps every preset name to (module, Preset); :func:`get` resolves a name."""

from __future__ import annotations

from types import ModuleType

from jaxlm.models import bert, gpt2, llama, transformer
from jaxlm.models.base import ModelConfig, Preset, lookup

FAMILIES: dict[str, ModuleType] = {"transformer": transformer, "gpt2": gpt2, "bert": bert, "llama": llama}

REGISTRY: dict[str, tuple[ModuleType, Preset]] = {
    name: (mod, preset) for mod in FAMILIES.values() for name, preset in mod.PRESETS.items()
}


def get(name: str) -> tuple[ModuleType, ModelConfig]:
    """Preset name -> (family module, Config). Unknown names raise a KeyError naming the closest."""
    mod, preset = lookup(REGISTRY, name)
    return mod, preset.config


def family_of(cfg: ModelConfig) -> ModuleType:
    """The family module a Config belongs to."""
    return FAMILIES[type(cfg).family]


__all__ = ["FAMILIES", "REGISTRY", "get", "family_of", "ModelConfig", "Preset", "bert", "gpt2", "llama",
           "transformer"]
