import jax
import jax.numpy as jnp

from jaxlm import count
from jaxlm.models import REGISTRY, get


def test_every_preset_count_matches_its_record():
    for name, (mod, preset) in REGISTRY.items():
        assert count(mod.spec(preset.config)) == preset.n_params, name


def test_gpt2_tiny_forward_shapes():
    mod, cfg = get("gpt2-tiny")
    params = mod.init(jax.random.key(0), cfg)
    logits = mod.apply(params, jnp.zeros((2, 5), jnp.int32), cfg)
    assert logits.shape == (2, 5, cfg.vocab_size) and logits.dtype == jnp.float32
