"""The pure train and eval steps. Jitting (and sharding or ``pmap``) happens in :mod:`jaxlm.train.loop`."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxlm.finetune.lora import combine as lora_combine
from jaxlm.train.state import TrainState
from jaxlm.train.tasks import TOKEN_KEYS, count_bad_ids

SUM_KEYS = ("loss", "nll", "correct", "weight")


def summarize(sums: dict) -> dict:
    """Loss sums -> means: ``loss`` (objective), ``nll``, ``accuracy`` per weighted position / example,
    and ``tokens`` (the weight total: target tokens, masked tokens or examples); any further sum a task
    adds (a mixture-of-experts model's ``moe_*``) becomes its mean per unit of weight."""
    w = jnp.maximum(sums["weight"], 1e-9)
    extra = {k: v / w for k, v in sums.items() if k not in SUM_KEYS}  # task-specific means (DPO's rewards)
    return {"loss": sums["loss"] / w, "nll": sums["nll"] / w, "accuracy": sums["correct"] / w,
            "tokens": sums["weight"]} | extra


def make_train_step(task, model_cfg, optimizer: optax.GradientTransformation, *,
                    grad_axis_name: str | None = None, check_ids: bool = True,
                    lora=None) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """``step(state, batch) -> (state, metrics)``: one gradient step, pure and un-jitted.

    With ``lora`` (a :class:`jaxlm.finetune.lora.LoRAConfig`) ``state.params`` are the adapters and
    ``state.frozen`` the base model: the task runs on :func:`jaxlm.finetune.lora.combine` of the two and only
    the adapters are differentiated and updated.

    The objective is the weighted mean loss ``sum(loss) / sum(weight)``. With ``grad_axis_name`` (the step
    runs under ``jax.pmap`` / ``shard_map`` with that axis) the weight total is ``psum``-ed first and the
    gradients ``psum``-ed after, which equals the gradient of the global-batch mean (i.e. ``pmean`` of
    per-device gradients when every device holds the same number of tokens); the metrics are the global
    means and totals, identical on every device. Each device's dropout key also folds in its axis index.
    Metrics: ``loss``, ``nll``, ``accuracy``, ``tokens``, ``grad_norm``, and with ``check_ids`` (the default)
    ``bad_ids``: how many token ids of the batch fall outside ``[0, vocab_size)``. Under jit they cannot
    raise (the embedding looks them up as zeros, a target gives a NaN loss), so the training loop raises on
    a non-zero count (:meth:`jaxlm.train.hooks.Loop.flush`); ``benchmarks/validation_cost.py`` measures the
    count's cost.
    """

    # tasks without token inputs (custom losses over other arrays) have nothing to check
    check_ids = check_ids and model_cfg is not None and bool(TOKEN_KEYS.get(getattr(task, "name", None)))

    def objective(params, frozen, batch, key):
        if lora is not None:  # the adapters' dropout gets its own key, off where the task's dropout is off
            k_drop, key = jax.random.split(key)
            k_drop = task.dropout_key(k_drop, True) if hasattr(task, "dropout_key") else k_drop
            params = lora_combine(frozen, params, lora, k_drop)
        sums = task(params, batch, key, model_cfg, True)
        total = sums["weight"] if grad_axis_name is None else lax.psum(sums["weight"], grad_axis_name)
        return sums["loss"] / jnp.maximum(total, 1e-9), sums

    def step(state: TrainState, batch: dict):
        key = state.key()
        if grad_axis_name is not None:
            key = jax.random.fold_in(key, lax.axis_index(grad_axis_name))
        (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(state.params, state.frozen, batch,
                                                                          key)
        if grad_axis_name is not None:
            grads = lax.psum(grads, grad_axis_name)
            sums = lax.psum(sums, grad_axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = summarize(sums) | {"grad_norm": optax.tree.norm(grads)}
        if check_ids:
            bad = count_bad_ids(task, batch, model_cfg.vocab_size)
            metrics["bad_ids"] = bad if grad_axis_name is None else lax.psum(bad, grad_axis_name)
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return step


EVAL_KEY = 1234  # fixed key for eval-time randomness (MLM masking), so eval numbers are comparable


def make_eval_step(task, model_cfg) -> Callable[[dict, dict], dict]:
    """``eval_step(params, batch) -> metrics`` without dropout: the means of :func:`summarize` plus the
    raw sums (``*_sum``) so batches can be combined exactly."""

    def eval_step(params: dict, batch: dict) -> dict:
        sums = task(params, batch, jax.random.key(EVAL_KEY), model_cfg, False)
        return summarize(sums) | {f"{k}_sum": v for k, v in sums.items()}

    return eval_step
