"""Task-level evaluation of trained models: decoded text scored with BLEU / ROUGE, extractive QA scored
with SQuAD's exact match and F1.

Training reports token losses; the articles report task metrics. These functions close the gap for any
:class:`jaxlm.pretrained.Loaded` model (a jaxlm run directory loaded with :func:`jaxlm.pretrained.load`):

- :func:`seq2seq_outputs`: the encoder-decoder's outputs for source texts, by greedy decoding or beam
  search (:mod:`jaxlm.generate`), decoded to strings; score them with :func:`jaxlm.metrics.bleu` /
  :func:`jaxlm.metrics.rouge`.
- :func:`predict_spans`: a BERT span head's best answer span for (question, passage) pairs, laid out as the
  training pipeline lays them out (``[bos] question [eos] passage [eos]``), mapped back to passage text.
- :func:`squad_scores`: exact match and token F1 with the official SQuAD v1.1/v2 answer normalisation.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

import numpy as np


def _specials(loaded) -> dict:
    from jaxlm.data import text

    sp = (loaded.extra or {}).get("specials") or {}
    if not sp and loaded.tokenizer is not None:
        sp = text.special_ids(loaded.tokenizer)
    return sp


def seq2seq_outputs(loaded, sources: Sequence[str], *, beam_size: int = 1, max_new_tokens: int = 64,
                    batch_size: int = 64, length_penalty: float = 0.6, max_source_len: int | None = None
                    ) -> list[str]:
    """Outputs of an encoder-decoder run for ``sources`` (strings) -> decoded strings.

    Each source is encoded as the pipeline encodes it for training (token ids + ``eos``, truncated to
    ``max_source_len``, default the run's ``data.seq_len``). ``beam_size=1`` is greedy decoding; larger
    runs beam search with the GNMT length penalty ``length_penalty``. Decoding stops at ``cfg.eos_id``.
    """
    from jaxlm.generate import beam_search, generate

    cfg, tok = loaded.config, loaded.tokenizer
    if tok is None:
        raise ValueError("seq2seq_outputs needs the run's tokenizer (tokenizer.json in the run directory).")
    run = (loaded.extra or {}).get("run")
    limit = max_source_len or (run.data.seq_len if run is not None else cfg.max_len)
    eos = _specials(loaded).get("eos", cfg.eos_id)
    ids = [e.ids[: limit - 1] + [eos] for e in tok.encode_batch(list(sources), add_special_tokens=False)]
    # sort by length so each batch pads little; restore the order at the end
    order = np.argsort([len(x) for x in ids], kind="stable")
    texts: dict[int, str] = {}
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = [ids[i] for i in idx]
        if beam_size == 1:
            res = generate(loaded.params, cfg, batch, max_new_tokens=max_new_tokens, greedy=True)
            toks = res.tokens
        else:
            res = beam_search(loaded.params, cfg, batch, beam_size=beam_size, max_new_tokens=max_new_tokens,
                              length_penalty=length_penalty)
            toks = res.tokens
        for i, t in zip(idx, toks):
            texts[int(i)] = tok.decode(t, skip_special_tokens=True).strip()
    return [texts[i] for i in range(len(ids))]


def predict_spans(loaded, questions: Sequence[str], passages: Sequence[str], *, max_answer_tokens: int = 30,
                  batch_size: int = 64, seq_len: int | None = None) -> list[str]:
    """The best answer span of a BERT span-head model for each (question, passage) -> passage substrings.

    Inputs are laid out as the training pipeline lays them out, ``[bos] question [eos] passage [eos]``,
    truncated to ``seq_len`` (default the run's ``data.seq_len``). The span maximises
    ``start_logit[i] + end_logit[j]`` over passage tokens ``i <= j < i + max_answer_tokens``.
    """
    import jax.numpy as jnp

    from jaxlm.data import packing

    cfg, tok = loaded.config, loaded.tokenizer
    if "span" not in tuple(getattr(cfg, "heads", ())):
        raise ValueError("predict_spans needs a BERT model with the span head (a run trained with "
                         "train.task=span).")
    run = (loaded.extra or {}).get("run")
    L = seq_len or (run.data.seq_len if run is not None else cfg.max_len)
    sp = _specials(loaded)
    rows, spans = [], []  # spans: (offset of the first passage token, passage offsets)
    for q, p in zip(questions, passages):
        qi = tok.encode(q, add_special_tokens=False).ids
        enc = tok.encode(p, add_special_tokens=False)
        off = 1 + len(qi) + 1
        ids = [sp["bos"], *qi, sp["eos"], *enc.ids, sp["eos"]][:L]
        rows.append(np.asarray(ids, np.int32))
        spans.append((off, enc.offsets[: max(0, L - off - 1)]))
    answers: list[str] = []
    for s in range(0, len(rows), batch_size):
        tokens, valid = packing.pad_to(rows[s:s + batch_size], L, sp["pad"])
        out = loaded.family.apply(loaded.params, jnp.asarray(tokens), cfg, valid=jnp.asarray(valid))
        st, en = np.asarray(out["start_logits"]), np.asarray(out["end_logits"])
        for b in range(tokens.shape[0]):
            off, offsets = spans[s + b]
            n = len(offsets)
            if n == 0:
                answers.append("")
                continue
            a, e = st[b, off:off + n], en[b, off:off + n]
            score = a[:, None] + e[None, :]  # [n, n]: start i, end j
            i_, j_ = np.indices(score.shape)
            score = np.where((j_ >= i_) & (j_ - i_ < max_answer_tokens), score, -np.inf)
            i, j = np.unravel_index(int(np.argmax(score)), score.shape)
            answers.append(passages[s + b][offsets[i][0]:offsets[j][1]].strip())
    return answers


# --- SQuAD metrics (the official evaluation script's normalisation) ------------------------------------
def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, the articles a/an/the and extra whitespace (SQuAD's normalisation)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1(prediction: str, truth: str) -> float:
    """Token-overlap F1 of the normalised answers (both empty -> 1)."""
    p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not p or not t:
        return float(p == t)
    common = collections.Counter(p) & collections.Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], truths: Sequence[str]) -> dict[str, float]:
    """Mean exact match and F1 (0-100) over aligned predictions and single reference answers."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions but {len(truths)} answers.")
    if not truths:
        raise ValueError("squad_scores of an empty set is undefined.")
    em = sum(exact_match(p, t) for p, t in zip(predictions, truths)) / len(truths)
    f = sum(f1(p, t) for p, t in zip(predictions, truths)) / len(truths)
    return {"exact_match": 100.0 * em, "f1": 100.0 * f}





def bleu_of_run(run_dir: str, *, beam_size: int = 4, limit: int | None = None, max_new_tokens: int | None = None,
                batch_size: int = 128) -> dict:
    """Corpus BLEU (sacrebleu, detokenised, 13a) of a translation run's greedy and beam-search outputs on
    evaluation data (``data.eval_path`` / ``data.eval_target_path``, line-aligned, blank lines skipped as
    in training; or the rows of ``data.eval_split`` / ``data.eval_fraction``, as training held them out). Returns ``{"greedy": bleu, f"beam{beam_size}": bleu, "examples": n, ...}``."""
    import time

    from jaxlm import metrics
    from jaxlm.pretrained import load_run

    loaded = load_run(run_dir)
    dc = loaded.extra["run"].data
    if dc.eval_path and dc.eval_target_path:
        with open(dc.eval_path, encoding="utf-8") as f_src, open(dc.eval_target_path, encoding="utf-8") as f_tgt:
            pairs = [(s.strip(), t.strip()) for s, t in zip(f_src, f_tgt) if s.strip() and t.strip()]
    else:  # a table or a hub dataset (data.eval_split): the rows training evaluated on
        from jaxlm.data import pipeline

        rows = pipeline.eval_rows(loaded.extra["run"])
        if rows is None:
            raise ValueError(f"{run_dir}: the run has no evaluation data to translate (data.eval_path, "
                             f"data.eval_split or data.eval_fraction).")
        pairs = list(zip(rows["source"], rows["target"]))
    pairs = pairs[:limit]
    src, ref = [s for s, _ in pairs], [t for _, t in pairs]
    n_new = max_new_tokens or (dc.target_len or dc.seq_len)
    out: dict = {"run_dir": str(run_dir), "step": loaded.extra["step"], "examples": len(src)}
    for name, beam in (("greedy", 1), (f"beam{beam_size}", beam_size)):
        t0 = time.perf_counter()
        hyp = seq2seq_outputs(loaded, src, beam_size=beam, max_new_tokens=n_new, batch_size=batch_size)
        out[name] = round(metrics.bleu(hyp, ref), 2)
        out[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
        out[f"{name}_samples"] = [{"source": s, "output": h, "reference": r}
                                  for s, h, r in list(zip(src, hyp, ref))[:3]]
    return out


__all__ = ["bleu_of_run", "exact_match", "f1", "normalize_answer", "predict_spans", "seq2seq_outputs",
           "squad_scores"]
