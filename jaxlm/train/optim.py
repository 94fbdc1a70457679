"""Optax optimizers and learning-rate schedules from a :class:`~jaxlm.train.config.TrainConfig`."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from jaxlm.params import flatten, unflatten

NO_DECAY_LEAVES = ("b", "bias", "scale")


def decay_mask(params: Mapping) -> dict:
    """True for parameters that get weight decay: everything except biases (leaf ``b`` / ``bias``, e.g.
    ``mlm/bias``) and normalisation parameters (any path part containing ``norm``). Derived from the
    parameter paths, so stacked layers (leading ``layers`` axis) are classified like single ones."""
    flat = flatten(params)
    return unflatten({k: not (k.split("/")[-1] in NO_DECAY_LEAVES or any("norm" in p for p in k.split("/")))
                      for k in flat})


def noam(d_model: int, warmup_steps: int, scale: float = 1.0) -> optax.Schedule:
    """The Transformer paper's rate (Vaswani et al. 2017, eq. 3):
    ``scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)`` with step counted from 1: a linear
    warm-up for ``warmup_steps`` steps, then inverse-square-root decay. The paper uses scale 1, warm-up 4000."""

    def schedule(count):
        step = jnp.asarray(count, jnp.float32) + 1.0
        return scale * d_model**-0.5 * jnp.minimum(step**-0.5, step * warmup_steps**-1.5)

    return schedule


def schedule(cfg, d_model: int | None = None) -> optax.Schedule:
    """The learning rate per optimizer update for ``cfg.schedule``: ``constant`` (after a linear warm-up),
    ``cosine`` (warm-up then cosine decay to ``lr * min_lr_ratio`` at ``steps``), ``linear`` (warm-up then
    linear decay to 0) or ``noam`` (``lr`` multiplies the paper's schedule; needs ``d_model``)."""
    w, lr, n = cfg.warmup_steps, cfg.lr, cfg.steps
    if cfg.schedule == "noam":
        if d_model is None:
            raise ValueError("the noam schedule needs d_model.")
        return noam(d_model, w, lr)
    warm = optax.linear_schedule(0.0, lr, w) if w else optax.constant_schedule(lr)
    if cfg.schedule == "constant":
        return optax.join_schedules([warm, optax.constant_schedule(lr)], [w]) if w else warm
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, max(n - w, 1), alpha=cfg.min_lr_ratio)
    else:  # linear
        decay = optax.linear_schedule(lr, 0.0, max(n - w, 1))
    return optax.join_schedules([warm, decay], [w]) if w else decay


def make_optimizer(cfg, model_cfg=None) -> optax.GradientTransformation:
    """``clip_by_global_norm(clip_norm)`` (if set) -> AdamW (decay masked by :func:`decay_mask`) / Adam /
    SGD with momentum ``b1``, on :func:`schedule`; wrapped in ``optax.MultiSteps`` when ``grad_accum > 1``
    (gradients of ``grad_accum`` consecutive calls are averaged, then one update is applied)."""
    lr = schedule(cfg, getattr(model_cfg, "d_model", None))
    if cfg.optimizer == "adamw":
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                          mask=decay_mask)
    elif cfg.optimizer == "adam":
        opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    else:
        opt = optax.sgd(lr, momentum=cfg.b1 or None)
    if cfg.clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    if cfg.grad_accum > 1:
        opt = optax.MultiSteps(opt, every_k_schedule=cfg.grad_accum).gradient_transformation()
    return opt


def learning_rate(cfg, model_cfg, update_step: int) -> float:
    """The rate used by update number ``update_step`` (0-based), for logging."""
    return float(jax.device_get(schedule(cfg, getattr(model_cfg, "d_model", None))(update_step)))
