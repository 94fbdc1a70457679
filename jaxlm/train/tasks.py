"""Training tasks: each maps (params, batch, key) to the loss sums of :mod:`jaxlm.losses`.

A :class:`Task` is called as ``task(params, batch, key, model_cfg, train)`` and returns a dict of sums
(``loss``, ``nll``, ``correct``, ``weight``); :mod:`jaxlm.train.step` divides by the weight total. ``key``
drives dropout (when ``train`` and dropout is enabled) and MLM masking.

Batches (all arrays have a leading batch dim B):
- ``causal_lm`` (GPT-2, LLaMA): ``inputs``, ``targets``, ``weights`` [B, T], optional ``segment_ids``,
  ``positions`` [B, T] (packed documents; see :func:`jaxlm.data.packing.pack`).
- ``mlm`` (BERT): ``tokens``, ``maskable`` [B, T], optional ``valid``, ``segment_ids``, ``positions``.
- ``seq2seq`` (Transformer): ``src``, ``src_valid`` [B, S]; ``tgt_in``, ``tgt_out``, ``tgt_valid``,
  ``weights`` [B, T].
- ``classification`` (BERT + classifier): ``tokens``, ``valid`` [B, T], ``labels`` [B].
- ``span`` (BERT + span head): ``tokens``, ``valid`` [B, T], ``start``, ``end`` [B].
- ``span_corruption`` (T5 pre-training): ``tokens`` [B, L] packed text; the step corrupts it
  (:func:`jaxlm.data.span_corruption.corrupt`, from the step's key) into encoder inputs and decoder targets.
- ``sft``: the ``causal_lm`` batch built from conversations by :mod:`jaxlm.finetune.sft` (weights = 1 on
  assistant tokens only).
- ``dpo``: ``chosen_*`` / ``rejected_*`` inputs, targets, weights [B, T] and the reference's summed log-probs
  ``ref_chosen_logps`` / ``ref_rejected_logps`` [B] (:mod:`jaxlm.finetune.dpo`); weight = pairs.
Any batch may carry ``example_weights`` [B] (0 = a padding row of the last eval batch, see
:meth:`jaxlm.data.packing.ArrayData.sequential`); every task multiplies it into its loss weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from jaxlm import losses
from jaxlm.config import ConfigError, closest
from jaxlm.data import span_corruption
from jaxlm.finetune import dpo
from jaxlm.models import family_of
from jaxlm.nn import embed, xent


@dataclass(frozen=True)
class Task:
    """A named loss function plus its options (hashable, so a step closing over it is cacheable)."""

    name: str
    fn: Callable = field(compare=False)
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    dropout: bool = True
    mlm_prob: float = 0.15
    mask_id: int | None = None
    random_low: int = 0  # MLM random replacements are drawn from [random_low, random_high)
    random_high: int | None = None
    noise_density: float = 0.15  # span corruption: fraction of tokens dropped ...
    mean_span_length: float = 3.0  # ... in spans of this mean length (T5)
    beta: float = 0.1  # dpo: the strength of the KL penalty toward the reference

    def __call__(self, params: dict, batch: dict, key: jax.Array | None, model_cfg, train: bool = True) -> dict:
        return self.fn(self, params, batch, key, model_cfg, train)

    def dropout_key(self, key, train: bool):
        return key if (train and self.dropout and key is not None) else None

    def ce(self, logits, targets, weights=None):
        return losses.cross_entropy(logits, targets, weights, label_smoothing=self.label_smoothing,
                                    z_loss=self.z_loss)


def _rows(batch: dict, weights, shape) -> jax.Array | None:
    """``weights`` (None = all count) of ``shape`` [B, ...] times the batch's ``example_weights`` [B]."""
    ew = batch.get("example_weights")
    if ew is None:
        return weights
    ew = jnp.broadcast_to(ew.reshape(ew.shape + (1,) * (len(shape) - 1)), shape).astype(jnp.float32)
    return ew if weights is None else ew * weights


def with_moe(sums: dict, aux: dict) -> dict:
    """Add a mixture-of-experts model's router terms (``aux["moe"]``, :func:`jaxlm.nn.moe.summarize`) to the
    loss sums: the objective gains ``aux["moe"]["loss"]`` (the load-balancing and router z-losses with the
    model config's weights) per unit of weight, and the sums gain ``moe_aux_loss``, ``moe_z_loss``,
    ``moe_dropped`` (fraction of (token, expert) pairs dropped) and ``moe_load_<e>`` (fraction of tokens
    routed to expert e, summing to top_k) so the step's metrics report their means. Unchanged without MoE."""
    m = aux.get("moe") if isinstance(aux, dict) else None
    if m is None:
        return sums
    w = sums["weight"]
    out = dict(sums, loss=sums["loss"] + m["loss"] * w, moe_aux_loss=m["aux_loss"] * w,
               moe_z_loss=m["z_loss"] * w, moe_dropped=m["dropped_frac"] * w)
    out.update({f"moe_load_{e}": m["load"][e] * w for e in range(m["load"].shape[0])})
    return out


def _causal_lm(task: Task, params, batch, key, cfg, train):
    # return_aux: a mixture-of-experts model returns its router losses there (aux["moe"])
    logits, aux = family_of(cfg).apply(params, batch["inputs"], cfg, positions=batch.get("positions"),
                                       segment_ids=batch.get("segment_ids"), key=task.dropout_key(key, train),
                                       return_aux=True)
    return with_moe(task.ce(logits, batch["targets"], _rows(batch, batch.get("weights"), batch["targets"].shape)),
                    aux)


def fused_causal_lm(task: Task, params: dict, batch: dict, key: jax.Array | None, cfg, train: bool) -> dict:
    """The ``causal_lm`` loss through :func:`jaxlm.nn.xent.cross_entropy`, which never stores the
    [tokens, vocab] logits; same value and gradient as the plain task. Use as
    ``Task("causal_lm", fused_causal_lm)`` or ``make_task("causal_lm", fused=True)``. No label smoothing,
    z-loss or output bias."""
    if task.label_smoothing or task.z_loss:
        raise ValueError("the fused cross-entropy has no label smoothing / z-loss; use the plain causal_lm "
                         "task.")
    if not cfg.tie_embeddings and "b" in params.get("lm_head", {}):
        raise ValueError("the fused cross-entropy does not take an output bias; use the plain causal_lm "
                         "task.")
    # the model's logits output is unused, so jit drops their computation
    _, aux = family_of(cfg).apply(params, batch["inputs"], cfg, positions=batch.get("positions"),
                                  segment_ids=batch.get("segment_ids"), key=task.dropout_key(key, train),
                                  return_aux=True, return_hidden=True)
    table = params["embed"]["tokens"] if cfg.tie_embeddings else params["lm_head"]["w"].T
    return with_moe(xent.cross_entropy(aux["hidden"], table, batch["targets"],
                                       _rows(batch, batch.get("weights"), batch["targets"].shape)), aux)


def _mlm(task: Task, params, batch, key, cfg, train):
    if task.mask_id is None:
        raise ValueError("the mlm task needs the tokenizer's mask token id (Task.mask_id).")
    k_mask, k_drop = jax.random.split(key)
    tokens = batch["tokens"]
    corrupted, selected = losses.mlm_mask(k_mask, tokens, batch["maskable"], mask_id=task.mask_id,
                                          vocab_size=task.random_high or cfg.vocab_size, prob=task.mlm_prob,
                                          low=task.random_low)
    out = family_of(cfg).apply(params, corrupted, cfg, valid=batch.get("valid"),
                               positions=batch.get("positions"), segment_ids=batch.get("segment_ids"),
                               key=task.dropout_key(k_drop, train))
    return task.ce(out["mlm_logits"], tokens, _rows(batch, selected, tokens.shape))


def _seq2seq(task: Task, params, batch, key, cfg, train):
    logits = family_of(cfg).apply(params, batch["src"], batch["tgt_in"], cfg, src_valid=batch["src_valid"],
                                  tgt_valid=batch.get("tgt_valid"), key=task.dropout_key(key, train))
    return task.ce(logits, batch["tgt_out"], _rows(batch, batch["weights"], batch["tgt_out"].shape))


def _classification(task: Task, params, batch, key, cfg, train):
    out = family_of(cfg).apply(params, batch["tokens"], cfg, valid=batch.get("valid"),
                               key=task.dropout_key(key, train))
    return task.ce(out["logits"], batch["labels"], _rows(batch, None, batch["labels"].shape))


def _span(task: Task, params, batch, key, cfg, train):
    out = family_of(cfg).apply(params, batch["tokens"], cfg, valid=batch.get("valid"),
                               key=task.dropout_key(key, train))
    return losses.span_loss(out["start_logits"], out["end_logits"], batch["start"], batch["end"],
                            batch.get("valid"), _rows(batch, None, batch["start"].shape))


def _span_corruption(task: Task, params, batch, key, cfg, train):
    # sentinels from the top of the model's vocabulary; the decoder starts from bos_id and learns to end
    # with eos_id, the ids generation uses
    k_noise, k_drop = jax.random.split(key)
    src, tgt = span_corruption.corrupt(k_noise, batch["tokens"], vocab_size=cfg.vocab_size, eos_id=cfg.eos_id,
                                       noise_density=task.noise_density, mean_span_length=task.mean_span_length)
    tgt_in = jnp.concatenate([jnp.full_like(tgt[:, :1], cfg.bos_id), tgt[:, :-1]], 1)  # shifted right
    logits = family_of(cfg).apply(params, src, tgt_in, cfg, key=task.dropout_key(k_drop, train))
    return task.ce(logits, tgt, _rows(batch, None, tgt.shape))
def _dpo(task: Task, params, batch, key, cfg, train):
    return dpo.sums(params, batch, cfg, beta=task.beta, label_smoothing=task.label_smoothing,
                    key=task.dropout_key(key, train))


TASKS: dict[str, Callable] = {"causal_lm": _causal_lm, "mlm": _mlm, "seq2seq": _seq2seq,
                              "classification": _classification, "span": _span,
                              "span_corruption": _span_corruption,
                              # sft: the causal LM loss over chat data whose weights mark assistant tokens
                              # (jaxlm.finetune.sft); dpo: preference pairs (jaxlm.finetune.dpo)
                              "sft": _causal_lm, "dpo": _dpo}

# the batch entries of each task that hold token ids (looked up in the embedding table or used as targets)
TOKEN_KEYS: dict[str, tuple[str, ...]] = {"causal_lm": ("inputs", "targets"), "mlm": ("tokens",),
                                          "seq2seq": ("src", "tgt_in", "tgt_out"), "classification": ("tokens",),
                                          "span": ("tokens",), "span_corruption": ("tokens",),
                                          "sft": ("inputs", "targets"),
                                          "dpo": ("chosen_inputs", "chosen_targets", "rejected_inputs",
                                                  "rejected_targets")}


def count_bad_ids(task: Task, batch: dict, vocab_size: int) -> jax.Array:
    """The number of token ids of ``batch`` (its :data:`TOKEN_KEYS` entries) outside ``[0, vocab_size)``:
    an int32 scalar, traceable. Under jit such ids cannot raise; the train step reports this count and the
    training loop stops on it."""
    keys = [k for k in TOKEN_KEYS.get(getattr(task, "name", None), ()) if k in batch]
    return sum((embed.count_out_of_range(batch[k], vocab_size) for k in keys), jnp.zeros((), jnp.int32))


def make_task(name: str, *, fused: bool = False, **options) -> Task:
    """The task ``name`` (one of :data:`TASKS`) with options (label_smoothing, z_loss, dropout, mlm_prob,
    mask_id, random_low, random_high). ``fused=True`` computes the causal_lm loss with
    :func:`fused_causal_lm`."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}{closest(name, TASKS)}; tasks: {sorted(TASKS)}.")
    if fused:
        if name != "causal_lm":
            raise ConfigError(f"the fused cross-entropy is for the causal_lm task, not {name!r}.")
        return Task(name, fused_causal_lm, **options)
    return Task(name, TASKS[name], **options)
