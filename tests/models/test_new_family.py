"""A family added from one file plus one registration works across the library: the registry, training
config resolution, generation (cached == full recompute) and the `jaxlm models` table, with no code in
train/, generate/ or commands/ (docs/architecture.md, "Adding a model family")."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import models
from jaxlm.config import ConfigError
from jaxlm.models import base, decoder


# ---- the family file: everything the library needs to know --------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Config(base.ModelConfig):
    """A small decoder: RMSNorm, RoPE, one key/value head, a plain GELU FFN without biases, untied head."""

    family: ClassVar[str] = "toydec"
    vocab_size: int = 128
    max_len: int = 64
    d_model: int = 32
    n_heads: int = 4
    n_kv_heads: int | None = 1
    n_layers: int = 2
    d_ff: int = 64
    dropout: float = 0.0
    attn_dropout: float = 0.0
    norm: str = "rmsnorm"
    pos_emb: str = "rope"
    use_bias: bool = False
    tie_embeddings: bool = False


def _family_module() -> types.ModuleType:
    mod = types.ModuleType("toydec")
    mod.Config = Config
    mod.PRESETS = {"toydec-tiny": base.Preset(Config(), "a test family", None)}
    mod.KIND = "decoder"
    mod.TASKS = ("causal_lm",)
    mod.HF = None
    mod.spec, mod.init, mod.apply, mod.init_cache = decoder.spec, decoder.init, decoder.apply, decoder.init_cache
    return mod


@pytest.fixture
def toydec(monkeypatch):
    """Register the family the way models/__init__.py does (one line there), for this test only."""
    mod = base.check_family(_family_module())
    monkeypatch.setitem(sys.modules, "toydec", mod)
    monkeypatch.setitem(models.FAMILIES, "toydec", mod)
    monkeypatch.setitem(models.REGISTRY, "toydec-tiny", (mod, mod.PRESETS["toydec-tiny"]))
    return mod


def test_registry_and_training_config_know_the_new_family(toydec):
    from jaxlm.train import config as C

    mod, cfg = models.get("toydec-tiny")
    assert mod is toydec and models.family_of(cfg) is toydec
    run = C.resolve(C.RunConfig(model="toydec-tiny", train=C.TrainConfig(task="causal_lm")))
    assert run.model == cfg
    with pytest.raises(ConfigError, match=r"train.task='mlm'.*bert"):
        C.resolve(C.RunConfig(model="toydec-tiny", train=C.TrainConfig(task="mlm")))


def test_generation_works_for_the_new_family(toydec):
    from jaxlm.generate import generate

    _, cfg = models.get("toydec-tiny")
    params = toydec.init(jax.random.key(0), cfg)
    prompts = [[3, 9, 27], [5, 1, 44, 2, 7]]
    out = generate(params, cfg, prompts, max_new_tokens=5, greedy=True, return_logits=True)
    for b, prompt in enumerate(prompts):
        seq = jnp.asarray([[*prompt, *out.tokens[b][:-1]]])
        ref = np.asarray(toydec.apply(params, seq, cfg)[0, len(prompt) - 1:])
        np.testing.assert_allclose(out.logits[b], ref, atol=1e-5, rtol=1e-5)


def test_models_table_lists_the_new_family(toydec):
    from jaxlm.commands.models import table

    row = next(line for line in table().splitlines() if line.startswith("toydec-tiny"))
    assert "toydec" in row and str(jaxlm_count(toydec)) in row


def jaxlm_count(mod) -> int:
    from jaxlm.params import count

    return count(mod.spec(mod.Config()))
