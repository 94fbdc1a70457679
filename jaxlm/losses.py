"""Losses as pure functions of logits, targets and weights.

Each returns *sums* over the weighted positions together with the weight total, so callers can average
over a batch, over gradient-accumulation micro-batches or over devices without bias
(``mean = psum(sum) / psum(weight)``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None, *,
                  label_smoothing: float = 0.0, z_loss: float = 0.0) -> dict[str, jax.Array]:
    """Token cross-entropy: ``logits`` [..., V] (any float dtype; computed in float32), integer
    ``targets`` [...], ``weights`` [...] (1 = counts, 0 = padding / masked; None = all count).

    With ``label_smoothing`` = eps the target distribution is ``(1 - eps) * onehot + eps / V`` (Szegedy et
    al. 2016; the Transformer paper uses eps = 0.1). ``z_loss`` adds ``z_loss * logsumexp(logits)^2`` (PaLM),
    which keeps the softmax normaliser near 1.

    Returns sums over weighted positions: ``loss`` (the training objective), ``nll`` (plain negative
    log-likelihood, for perplexity), ``correct`` (argmax == target) and ``weight`` (the weight total).
    """
    logits = logits.astype(jnp.float32)
    w = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)  # [...]
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    nll = lse - target_logit
    if label_smoothing:
        # -sum_v q_v log p_v with q = (1-eps) onehot + eps/V  ==  (1-eps) nll + eps * (lse - mean_v logit_v)
        smooth = lse - jnp.mean(logits, axis=-1)
        loss = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    else:
        loss = nll
    if z_loss:
        loss = loss + z_loss * jnp.square(lse)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {"loss": jnp.sum(loss * w), "nll": jnp.sum(nll * w), "correct": jnp.sum(correct * w),
            "weight": jnp.sum(w)}


def mlm_mask(key: jax.Array, tokens: jax.Array, maskable: jax.Array, *, mask_id: int, vocab_size: int,
             prob: float = 0.15, low: int = 0) -> tuple[jax.Array, jax.Array]:
    """BERT's masking (Devlin et al. 2019, §3.1): select ``prob`` of the ``maskable`` positions [B, T];
    replace 80 % of the selected tokens by ``mask_id``, 10 % by a random token in ``[low, vocab_size)``,
    and leave 10 % unchanged. Returns (corrupted tokens [B, T], selected [B, T] bool) — the loss is computed
    on the selected positions only, against the original tokens."""
    k_sel, k_kind, k_rand = jax.random.split(key, 3)
    selected = (jax.random.uniform(k_sel, tokens.shape) < prob) & maskable.astype(bool)
    u = jax.random.uniform(k_kind, tokens.shape)
    random_tokens = jax.random.randint(k_rand, tokens.shape, low, vocab_size, dtype=tokens.dtype)
    out = jnp.where(selected & (u < 0.8), jnp.asarray(mask_id, tokens.dtype), tokens)
    out = jnp.where(selected & (u >= 0.8) & (u < 0.9), random_tokens, out)
    return out, selected


def span_loss(start_logits: jax.Array, end_logits: jax.Array, start: jax.Array, end: jax.Array,
              valid: jax.Array | None = None, weights: jax.Array | None = None) -> dict[str, jax.Array]:
    """Extractive QA (BERT §4.2): the mean of start- and end-position cross-entropies over the tokens.
    ``start_logits``/``end_logits`` [B, T]; ``start``/``end`` [B]; ``valid`` [B, T] masks padding out of
    the softmax; ``weights`` [B] (None = all count) weighs examples. ``correct`` counts examples whose
    start and end are both right."""
    if valid is not None:
        neg = jnp.finfo(jnp.float32).min
        start_logits = jnp.where(valid, start_logits, neg)
        end_logits = jnp.where(valid, end_logits, neg)
    s = cross_entropy(start_logits, start, weights)
    e = cross_entropy(end_logits, end, weights)
    both = (jnp.argmax(start_logits, -1) == start) & (jnp.argmax(end_logits, -1) == end)
    w = jnp.ones(both.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    return {"loss": 0.5 * (s["loss"] + e["loss"]), "nll": 0.5 * (s["nll"] + e["nll"]),
            "correct": jnp.sum(both.astype(jnp.float32) * w), "weight": s["weight"]}
