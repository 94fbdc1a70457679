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
