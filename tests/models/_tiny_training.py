"""Training checks for a decoder family's tiny preset, through the same code ``jaxlm train`` runs: full
training lowers the loss (``train.step.make_train_step``), and LoRA (``finetune.lora``) finds every
projection of the family's parameter names, is the base model at B = 0 and trains."""

from __future__ import annotations

import jax
import numpy as np

from jaxlm.finetune import lora
from jaxlm.train import config as C
from jaxlm.train import optim, state, step, tasks


def _batch(V: int, B: int = 4, T: int = 16, seed: int = 0) -> dict:
    x = np.random.default_rng(seed).integers(5, V, (B, T + 1)).astype(np.int32)
    return {"inputs": x[:, :-1], "targets": x[:, 1:], "weights": np.ones((B, T), np.float32)}


def loss_falls(cfg, steps: int = 8) -> list[float]:
    """Full-parameter causal-LM training on one repeated batch -> the losses."""
    opt = optim.make_optimizer(C.TrainConfig(lr=3e-3, warmup_steps=0), cfg)
    st = state.create_state(jax.random.key(1), cfg, opt)
    f = jax.jit(step.make_train_step(tasks.make_task("causal_lm"), cfg, opt), donate_argnums=0)
    batch = _batch(cfg.vocab_size)
    losses = []
    for _ in range(steps):
        st, m = f(st, batch)
        losses.append(float(m["loss"]))
    return losses


def lora_trains(mod, cfg, steps: int = 6) -> tuple[list[str], list[float], np.ndarray, np.ndarray]:
    """LoRA on every projection of every layer -> (targets, losses, base logits, B = 0 logits); ``steps=0``
    skips the training (and its compile)."""
    lc = lora.LoRAConfig(targets=("layers/.*",), rank=4, alpha=8.0)
    paths = lora.targets(cfg, lc)
    base = mod.init(jax.random.key(0), cfg)
    adapters = lora.init(jax.random.key(2), cfg, lc)
    tok = jax.random.randint(jax.random.key(1), (2, 8), 0, cfg.vocab_size)
    f = jax.jit(lambda p: mod.apply(p, tok, cfg))
    ref, zero_b = np.asarray(f(base)), np.asarray(f(lora.combine(base, adapters, lc)))
    if not steps:
        return paths, [], ref, zero_b
    opt = optim.make_optimizer(C.TrainConfig(lr=1e-2, warmup_steps=0), cfg)
    st = state.create_state(jax.random.key(3), cfg, opt, params=adapters, frozen=base)
    g = jax.jit(step.make_train_step(tasks.make_task("causal_lm"), cfg, opt, lora=lc))
    batch = _batch(cfg.vocab_size)
    losses = []
    for _ in range(steps):
        st, m = g(st, batch)
        losses.append(float(m["loss"]))
    return paths, losses, ref, zero_b
