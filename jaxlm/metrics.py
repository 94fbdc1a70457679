"""Evaluation metrics: perplexity, accuracy, BLEU (sacrebleu) and ROUGE (rouge-score)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def perplexity(nll: float) -> float:
    """exp(mean negative log-likelihood in nats); inf when it overflows."""
    try:
        return math.exp(nll)
    except OverflowError:
        return float("inf")


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of ``predictions`` equal to ``labels``."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels.")
    if not labels:
        raise ValueError("accuracy of an empty set is undefined.")
    return sum(int(p == y) for p, y in zip(predictions, labels)) / len(labels)


def bleu(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
         tokenize: str = "13a") -> float:
    """Corpus BLEU (0-100) by sacrebleu: ``references`` is one string per hypothesis, or a list of
    reference streams (each one string per hypothesis)."""
    import sacrebleu

    refs = [list(references)] if references and isinstance(references[0], str) else [list(r) for r in references]
    return float(sacrebleu.corpus_bleu(list(hypotheses), refs, tokenize=tokenize).score)


def rouge(hypotheses: Sequence[str], references: Sequence[str],
          types: Sequence[str] = ("rouge1", "rouge2", "rougeL")) -> dict[str, float]:
    """Mean ROUGE F1 (0-100) per type, by Google's ``rouge-score`` with stemming."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    totals = dict.fromkeys(types, 0.0)
    for h, r in zip(hypotheses, references):
        s = scorer.score(r, h)
        for t in types:
            totals[t] += s[t].fmeasure
    n = max(len(hypotheses), 1)
    return {t: 100.0 * v / n for t, v in totals.items()}


# Peak dense FLOP/s per device used for the MFU estimate when train.peak_flops is not set. The CPU figure
# is an f32 matmul peak of a 2-core development VM (benchmarks/RESULTS.md): CPUs vary, so on CPU the MFU is
# an estimate only. Accelerator figures are the vendors' dense bf16 peaks.
PEAK_FLOPS = {"cpu": 4.3e11, "h100": 989e12, "h200": 989e12, "a100": 312e12, "v100": 125e12, "l4": 121e12,
              "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12, "tpu v6": 918e12}


def peak_flops(device=None) -> float:
    """Peak FLOP/s of one device, looked up by its kind in :data:`PEAK_FLOPS` (CPU if unknown)."""
    import jax

    d = device or jax.devices()[0]
    kind = f"{d.platform} {getattr(d, 'device_kind', '')}".lower()
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):
        if name != "cpu" and name in kind:
            return PEAK_FLOPS[name]
    return PEAK_FLOPS["cpu"]


def flops_per_token(n_params: int, n_layers: int, seq_len: int, d_model: int) -> float:
    """Training FLOPs per token (Kaplan et al. 2020; PaLM appendix B): ``6 N + 12 L T D`` — 6 per parameter
    (2 forward + 4 backward multiply-adds) plus the attention score and value products (``2 T D`` per layer
    forward, three times that with the backward). MFU = flops_per_token * tokens/s / (peak * devices)."""
    return 6.0 * n_params + 12.0 * n_layers * seq_len * d_model
