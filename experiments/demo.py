"""Placeholder demo until training lands: list presets and run one forward pass of a tiny GPT-2."""

import jax

from jaxlm.models import get

mod, cfg = get("gpt2-tiny")
params = mod.init(jax.random.key(0), cfg)
tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
logits = mod.apply(params, tokens, cfg)
print(f"gpt2-tiny forward: tokens {tokens.shape} -> logits {logits.shape} {logits.dtype}")
