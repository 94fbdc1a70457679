"""A small train step of our own (causal-LM / seq2seq cross-entropy, AdamW), used until jaxlm.train lands
and kept as the fallback: the state is ``{"params", "opt_state", "step"}``.

Under pmap (``grad_axis_name`` set) the loss is the sum over this device's tokens divided by the token
count summed over all devices, and gradients are summed: exactly the global token mean the jit path takes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxlm import models


def optimizer():
    return optax.adamw(1e-2, weight_decay=0.01)


def create_state(key, cfg, opt):
    params = models.family_of(cfg).init(key, cfg)
    return {"params": params, "opt_state": opt.init(params), "step": jnp.zeros((), jnp.int32)}


def _logits(params, batch, cfg):
    mod = models.family_of(cfg)
    if "src" in batch:
        return mod.apply(params, batch["src"], batch["tgt_in"], cfg, src_valid=batch["src_valid"])
    return mod.apply(params, batch["inputs"], cfg)


def make_step(cfg, opt, grad_axis_name=None):
    def loss_fn(params, batch):
        logits = _logits(params, batch, cfg)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        n = batch["weights"].sum()
        if grad_axis_name is not None:
            n = jax.lax.psum(n, grad_axis_name)
        return (ce * batch["weights"]).sum() / n

    def step(state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch)
        if grad_axis_name is not None:
            loss, grads = jax.lax.psum((loss, grads), grad_axis_name)
        updates, opt_state = opt.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, {"loss": loss}

    return step
