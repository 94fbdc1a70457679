"""Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model
is Secretly a Reward Model"), sigmoid loss.

For a prompt x with a chosen completion y_w and a rejected one y_l, and log-probabilities summed over the
completion tokens under the policy (π) and a frozen reference (ref):

    h = (log π(y_w|x) - log ref(y_w|x)) - (log π(y_l|x) - log ref(y_l|x))
    loss = -log σ(β h)                       (with label smoothing ε: -(1-ε) log σ(βh) - ε log σ(-βh))

The implicit rewards are ``β (log π - log ref)`` of each completion; their margin's sign is the pair
accuracy. The reference log-probs come from the same step (LoRA: the base model is the reference, i.e. the
params without adapters) or are precomputed once before training (``ref_chosen_logps`` /
``ref_rejected_logps`` in the batch).

Batches: ``chosen_inputs``, ``chosen_targets``, ``chosen_weights``, ``rejected_*`` [B, T] (weights = 1 on
completion targets only), optional ``ref_chosen_logps``, ``ref_rejected_logps`` [B].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.data.preference import PreferenceDataError, build  # noqa: F401  (re-exported)
from jaxlm.models import family_of


def sequence_logps(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Sum over t of ``weights[b, t] * log softmax(logits[b, t])[targets[b, t]]``: [B, T, V] -> [B]
    (float32)."""
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(lp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]  # [B, T]
    return (tok * weights.astype(jnp.float32)).sum(-1)


def loss(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array, ref_rejected: jax.Array,
         beta: float = 0.1, label_smoothing: float = 0.0) -> dict[str, jax.Array]:
    """Per-pair DPO terms from summed log-probs [B]: ``loss`` [B], ``chosen_reward``, ``rejected_reward``
    (``β (log π - log ref)``), ``margin`` (their difference) and ``correct`` (margin > 0) [B]."""
    cr = beta * (policy_chosen - ref_chosen)
    rr = beta * (policy_rejected - ref_rejected)
    h = cr - rr  # = beta * ((pc - pr) - (rc - rr))
    losses = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(h) - label_smoothing * jax.nn.log_sigmoid(-h)
    return {"loss": losses, "chosen_reward": cr, "rejected_reward": rr, "margin": h,
            "correct": (h > 0).astype(jnp.float32)}


def logps(params: dict, batch: dict, cfg, side: str, key=None) -> jax.Array:
    """Summed completion log-probs [B] of ``side`` ("chosen" / "rejected") of ``batch`` under ``params``."""
    logits = family_of(cfg).apply(params, batch[f"{side}_inputs"], cfg, key=key)
    return sequence_logps(logits, batch[f"{side}_targets"], batch[f"{side}_weights"])


def sums(params: dict, batch: dict, cfg, *, beta: float, label_smoothing: float = 0.0, reference: dict | None = None,
         key=None) -> dict[str, jax.Array]:
    """The loss sums the train step divides by ``weight`` (the number of pairs): ``loss``, ``correct``
    (pairs whose implicit reward prefers the chosen completion), ``nll`` (the chosen completions' negative
    log-likelihood per pair), and ``chosen_reward``, ``rejected_reward``, ``reward_margin`` (logged as
    means). Reference log-probs from the batch (precomputed) or from ``reference`` params (gradient
    stopped)."""
    k1, k2 = (None, None) if key is None else jax.random.split(key)
    pc, pr = logps(params, batch, cfg, "chosen", k1), logps(params, batch, cfg, "rejected", k2)
    if "ref_chosen_logps" in batch:
        rc, rr = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    elif reference is not None:
        reference = jax.lax.stop_gradient(reference)
        rc, rr = logps(reference, batch, cfg, "chosen"), logps(reference, batch, cfg, "rejected")
    else:
        raise ValueError("DPO needs reference log-probs: precompute ref_chosen_logps / ref_rejected_logps "
                         "(dpo.precompute_reference) or pass the reference params.")
    t = loss(pc, pr, rc, rr, beta, label_smoothing)
    w = batch.get("example_weights", jnp.ones_like(pc)).astype(jnp.float32)
    return {"loss": (t["loss"] * w).sum(), "correct": (t["correct"] * w).sum(), "nll": (-pc * w).sum(),
            "weight": w.sum(), "chosen_reward": (t["chosen_reward"] * w).sum(),
            "rejected_reward": (t["rejected_reward"] * w).sum(), "reward_margin": (t["margin"] * w).sum()}


def precompute_reference(params: dict, arrays: dict[str, np.ndarray], cfg, batch_size: int = 16
                         ) -> dict[str, np.ndarray]:
    """``arrays`` plus ``ref_chosen_logps`` / ``ref_rejected_logps`` [N] under the frozen reference
    ``params`` (computed once, in batches, jitted)."""
    f = jax.jit(lambda p, b: (logps(p, b, cfg, "chosen"), logps(p, b, cfg, "rejected")))
    n = len(arrays["chosen_inputs"])
    rc, rr = [], []
    for s in range(0, n, batch_size):
        b = {k: jnp.asarray(v[s:s + batch_size]) for k, v in arrays.items() if k.startswith(("chosen", "rejected"))}
        c, r = f(params, b)
        rc.append(np.asarray(c))
        rr.append(np.asarray(r))
    return dict(arrays) | {"ref_chosen_logps": np.concatenate(rc), "ref_rejected_logps": np.concatenate(rr)}
