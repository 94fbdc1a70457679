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

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.data.packing import pad_to
from jaxlm.models import family_of


class PreferenceDataError(ValueError):
    """A preference pair that cannot be trained on."""


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


def build(prompts: Sequence[np.ndarray], chosen: Sequence[np.ndarray], rejected: Sequence[np.ndarray],
          seq_len: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Token ids of (prompt, chosen, rejected) triples -> the DPO batch arrays [N, seq_len]: each side is
    ``prompt + completion`` shifted for next-token prediction, with weights on completion targets only.
    Identical chosen and rejected completions (nothing to prefer) or a prompt that leaves no room for the
    completion are errors naming the pair."""
    out: dict[str, list] = {}
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected, strict=True)):
        p, c, r = (np.asarray(a, np.int32) for a in (p, c, r))
        if np.array_equal(c, r):
            raise PreferenceDataError(f"preference pair {i}: chosen and rejected are identical, so there is "
                                      f"nothing to prefer; drop the pair or fix the data.")
        if len(p) < 1 or len(c) < 1 or len(r) < 1:
            raise PreferenceDataError(f"preference pair {i}: prompt, chosen and rejected must each hold at "
                                      f"least one token.")
        if len(p) >= seq_len:
            raise PreferenceDataError(f"preference pair {i}: the prompt has {len(p)} tokens, leaving no room "
                                      f"for the completion in seq_len={seq_len}; raise data.seq_len.")
        for side, comp in (("chosen", c), ("rejected", r)):
            seq = np.concatenate([p, comp])[: seq_len + 1]
            w = np.zeros(len(seq) - 1, np.float32)
            w[len(p) - 1:] = 1.0  # targets seq[len(p):] are the completion
            out.setdefault(f"{side}_inputs", []).append(seq[:-1])
            out.setdefault(f"{side}_targets", []).append(seq[1:])
            out.setdefault(f"{side}_weights", []).append(w)
    arrays = {}
    for k, v in out.items():
        if k.endswith("weights"):
            arrays[k] = np.stack([np.pad(x, (0, seq_len - len(x))) for x in v]).astype(np.float32)
        else:
            arrays[k] = pad_to(v, seq_len, pad_id)[0]
    return arrays


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
