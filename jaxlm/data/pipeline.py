"""A run's data: the config's files -> tokenizer -> train / eval :class:`~jaxlm.data.packing.ArrayData`.

:func:`prepare` reads ``data.path`` (and ``data.eval_path``, or holds out ``data.eval_fraction`` of the
training rows), trains or loads the tokenizer on the *training* split only (and saves it as
``RUN_DIR/tokenizer.json``; a resumed run reloads that file, so its ids never change), checks the tokenizer
against ``model.vocab_size`` and builds the arrays the task's batches are cut from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.data import chat, packing, preference, span_corruption, text
from jaxlm.data.text import DataError
from jaxlm.fileio import write_atomic

TOKENIZER_FILE = "tokenizer.json"


@dataclass
class Prepared:
    """What a run trains on: ``train`` / ``eval`` arrays, the tokenizer and its special ids, and facts
    for logging (``info``: row counts, tokens, label names, unigram entropy of the training targets)."""

    train: packing.ArrayData
    eval: packing.ArrayData | None
    tokenizer: Any
    specials: dict[str, int | None]
    info: dict = field(default_factory=dict)


def _texts(ds, col: str, what: str) -> list[str]:
    vals = text.column(ds, col, what)
    return ["" if v is None else str(v) for v in vals]


def _load(dc, path: str, max_examples, what: str, split: str | None = None):
    return text.load(path, fmt=dc.format, pattern=dc.glob, sample_by=dc.sample_by, max_examples=max_examples,
                     what=what, split=split or getattr(dc, "split", "train"), config=getattr(dc, "hub_config", ""),
                     local=getattr(dc, "local", ""))


def is_hub(dc) -> bool:
    """Whether ``data.path`` names a hub dataset id (``data.split`` / ``eval_split`` / ``hub_config`` apply
    to it; a local file has one split, so with a local ``data.path`` they are ignored and evaluation uses
    ``data.eval_path`` or ``data.eval_fraction``)."""
    return dc.format == "hub" or (dc.format == "auto" and text.looks_like_hub_name(dc.path))


def _answers(values: list) -> tuple[list[str], list[int]]:
    """Answer texts and character offsets (-1 = unknown: the span task then finds the answer's first
    occurrence) of a span task's answer column: plain strings, or SQuAD's ``{"text": [...],
    "answer_start": [...]}`` (first answer; an unanswerable question has none and is dropped)."""
    texts, starts = [], []
    for v in values:
        if isinstance(v, dict):
            t, a = list(v.get("text") or []), list(v.get("answer_start") or [])
            texts.append(str(t[0]) if t else "")
            starts.append(int(a[0]) if a else -1)
        else:
            texts.append("" if v is None else str(v))
            starts.append(-1)
    return texts, starts


def _rows(dc, task: str) -> tuple[dict[str, list], dict[str, list] | None]:
    """Column lists of the train and eval rows for ``task`` (eval None when nothing is held out)."""

    def columns(ds, tgt_ds=None) -> dict[str, list]:
        if task in ("causal_lm", "mlm", "span_corruption"):
            return {"text": _texts(ds, dc.text_column, "data.text_column")}
        if task == "seq2seq":
            if tgt_ds is not None:
                src, tgt = _texts(ds, "text", "data.text_column"), _texts(tgt_ds, "text", "data.text_column")
                if len(src) != len(tgt):
                    raise DataError(f"data.path has {len(src)} lines but data.target_path has {len(tgt)}; "
                                    f"they must be line-aligned translations.")
            else:
                src = _texts(ds, dc.source_column, "data.source_column")
                tgt = _texts(ds, dc.target_column, "data.target_column")
            keep = [i for i, (s, t) in enumerate(zip(src, tgt)) if s.strip() and t.strip()]
            return {"source": [src[i].strip() for i in keep], "target": [tgt[i].strip() for i in keep]}
        if task == "classification":
            return {"text": _texts(ds, dc.text_column, "data.text_column"),
                    "label": list(text.column(ds, dc.label_column, "data.label_column"))}
        if task == "sft":
            return {"messages": list(text.column(ds, dc.messages_column, "data.messages_column"))}
        if task == "dpo":
            return {k: _texts(ds, getattr(dc, f"{k}_column"), f"data.{k}_column")
                    for k in ("prompt", "chosen", "rejected")}
        answer, start = _answers(list(text.column(ds, dc.answer_column, "data.answer_column")))
        return {"query": _texts(ds, dc.query_column, "data.query_column"),
                "text": _texts(ds, dc.text_column, "data.text_column"), "answer": answer, "answer_start": start}

    if task == "seq2seq" and dc.target_path:
        ld = lambda p, n, w: text.load(p, fmt="text", sample_by="line", max_examples=n, what=w)  # noqa: E731
        train = columns(ld(dc.path, dc.max_examples, "data.path"),
                        ld(dc.target_path, dc.max_examples, "data.target_path"))
        ev = None
        if dc.eval_path:
            if not dc.eval_target_path:
                raise DataError("data.eval_path is set for a seq2seq run from text files; set "
                                "data.eval_target_path to the line-aligned target file too.")
            ev = columns(ld(dc.eval_path, dc.max_eval_examples, "data.eval_path"),
                         ld(dc.eval_target_path, dc.max_eval_examples, "data.eval_target_path"))
    else:
        train = columns(_load(dc, dc.path, dc.max_examples, "data.path"))
        ev = columns(_load(dc, dc.eval_path, dc.max_eval_examples, "data.eval_path")) if dc.eval_path else None
        if ev is None and getattr(dc, "eval_split", "") and is_hub(dc):  # another split of the hub dataset
            ev = columns(_load(dc, dc.path, dc.max_eval_examples, "data.path", split=dc.eval_split))
    if ev is None and dc.eval_fraction > 0:
        n = len(next(iter(train.values())))
        if n == 1 and task in ("causal_lm", "mlm", "span_corruption"):  # one document (Tiny Shakespeare): cut its tail off
            a, b = text.split_text(train["text"][0], dc.eval_fraction)
            train, ev = {"text": [a]}, {"text": [b]}
        else:
            tr, ee = text.split_for_eval(n, dc.eval_fraction)
            ev = {k: [v[i] for i in ee] for k, v in train.items()}
            train = {k: [v[i] for i in tr] for k, v in train.items()}
    if not next(iter(train.values())):
        raise DataError("no training rows are left (empty file or every row blank); check data.path.")
    return train, ev


def _tokenizer_texts(task: str, rows: dict[str, list]) -> list[str]:
    if task == "seq2seq":
        return rows["source"] + rows["target"]  # one shared vocabulary, as in the paper
    if task == "span":
        return rows["query"] + rows["text"]
    if task == "dpo":
        return rows["prompt"] + rows["chosen"] + rows["rejected"]
    if task == "sft":
        return []  # always a pretrained tokenizer (checked in prepare)
    return rows["text"]


def _labels(values: list, names: list | None) -> tuple[np.ndarray, list]:
    if names is None:
        if all(isinstance(v, (int, np.integer)) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())
               for v in values):
            ints = sorted({int(v) for v in values})
            names = list(range(max(ints) + 1)) if min(ints) >= 0 else ints
        else:
            names = sorted({str(v) for v in values})
    index = {str(n): i for i, n in enumerate(names)}
    bad = sorted({str(v) for v in values if str(v).strip() not in index})
    if bad:
        raise DataError(f"labels {bad[:5]} do not occur in the training data's labels {names}.")
    return np.asarray([index[str(v).strip()] for v in values], np.int32), names


def _span_rows(tok, sp, rows, seq_len: int) -> dict[str, np.ndarray]:
    """[bos] query [eos] passage [eos] with the answer's first/last passage token as start/end; examples
    whose answer is missing or cut off by ``seq_len`` are dropped."""
    seqs, starts, ends = [], [], []
    offsets = rows.get("answer_start") or [-1] * len(rows["answer"])
    for q, p, a, known in zip(rows["query"], rows["text"], rows["answer"], offsets):
        # the dataset's character offset when it has one (SQuAD), else the answer's first occurrence
        c0 = known if known >= 0 and p[known:known + len(a)] == a else p.find(a)
        if not a or c0 < 0:
            continue
        c1 = c0 + len(a)
        qi = tok.encode(q, add_special_tokens=False).ids
        enc = tok.encode(p, add_special_tokens=False)
        toks = [i for i, (s, e) in enumerate(enc.offsets) if e > c0 and s < c1]
        if not toks:
            continue
        off = 1 + len(qi) + 1
        ids = [sp["bos"], *qi, sp["eos"], *enc.ids, sp["eos"]]
        if off + toks[-1] >= seq_len:
            continue
        seqs.append(np.asarray(ids[:seq_len], np.int32))
        starts.append(off + toks[0])
        ends.append(off + toks[-1])
    if not seqs:
        raise DataError("no span example keeps its answer inside data.seq_len tokens; raise data.seq_len.")
    tokens, valid = packing.pad_to(seqs, seq_len, sp["pad"])
    return {"tokens": tokens, "valid": valid, "start": np.asarray(starts, np.int32),
            "end": np.asarray(ends, np.int32)}


def _arrays(task: str, rows: dict, tok, sp: dict, dc, label_names=None, template=None) -> tuple[dict, list | None]:
    L = dc.seq_len
    if task == "sft":
        arr, info = chat.build(rows["messages"], tok, template, L, pad_id=sp["pad"],
                               **chat.template_kwargs(tok, {"bos_id": sp["bos"], "eos_id": sp["eos"]}))
        return arr, info
    if task == "dpo":
        return preference.build(text.encode(tok, rows["prompt"]), text.encode(tok, [" " + c for c in rows["chosen"]]),
                                text.encode(tok, [" " + r for r in rows["rejected"]]), L, pad_id=sp["pad"]), None
    if task == "causal_lm":
        return packing.pack(text.encode(tok, rows["text"]), L, eos_id=sp["eos"]), None
    if task == "mlm":
        arr = packing.pack(text.encode(tok, rows["text"]), L, bos_id=sp["bos"], eos_id=sp["eos"], shift=False)
        special = [i for i in sp.values() if i is not None]
        arr["maskable"] = ~np.isin(arr["tokens"], special)
        return arr, None
    if task == "span_corruption":  # blocks of L tokens; the train step corrupts them
        return packing.pack(text.encode(tok, rows["text"]), L, eos_id=sp["eos"], shift=False), None
    if task == "seq2seq":
        for k in ("bos", "eos"):
            if sp[k] is None:
                raise DataError(f"seq2seq needs a {k} token; the tokenizer has none.")
        return packing.pad_pairs(text.encode(tok, rows["source"]), text.encode(tok, rows["target"]), L,
                                 dc.target_len or L, bos_id=sp["bos"], eos_id=sp["eos"], pad_id=sp["pad"]), None
    if task == "classification":
        arr = packing.pad_single(text.encode(tok, rows["text"]), L, bos_id=sp["bos"], eos_id=sp["eos"],
                                 pad_id=sp["pad"])
        arr["labels"], names = _labels(rows["label"], label_names)
        return arr, names
    return _span_rows(tok, sp, rows, L), None


def unigram_entropy(targets: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Entropy (nats) of the empirical token distribution: the loss of the best model that ignores context."""
    t = targets.ravel() if weights is None else targets.ravel()[weights.ravel() > 0]
    counts = np.bincount(t).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def prepare(run, run_dir: str | Path | None = None) -> Prepared:
    """Build the run's data (see the module docstring). ``run`` is a resolved RunConfig."""
    dc, task, cfg = run.data, run.train.task, run.model
    tok_file = Path(run_dir) / TOKENIZER_FILE if run_dir is not None else None
    if task == "sft" and dc.tokenizer in ("char", "bpe"):
        raise DataError("train.task=sft fine-tunes a pretrained chat model: set data.tokenizer to its checkpoint "
                        "directory (or tokenizer.json) so its tokenizer and chat template are used.")
    template = None
    if task == "sft":
        template = chat.load_template(dc.chat_template or dc.tokenizer)
        if template is None:
            raise chat.ChatDataError(f"no chat template at {dc.chat_template or dc.tokenizer}: the tokenizer has "
                                     f"none; set data.chat_template to a .jinja file or a chat model's directory.")
    if getattr(dc, "streaming", False):  # read, tokenized and packed on the fly: jaxlm.data.stream
        import jax

        from jaxlm.data import stream

        return Prepared(*stream.prepare(run, run_dir, tok_file, rank=jax.process_index(), world=jax.process_count()))
    train_rows, eval_rows = _rows(dc, task)
    if tok_file is not None and tok_file.is_file():
        tok = text.load_tokenizer(tok_file)
    else:
        # span corruption takes its sentinel ids from the top of the model's vocabulary: keep them free
        free = span_corruption.lengths(dc.seq_len).spans if task == "span_corruption" else 0
        tok = text.build_tokenizer(dc.tokenizer, _tokenizer_texts(task, train_rows),
                                   dc.vocab_size or cfg.vocab_size - free)
        if tok_file is not None:
            write_atomic(tok_file, lambda p: tok.save(str(p)))
    text.check_vocab(tok, cfg.vocab_size)
    if task == "span_corruption":
        n_tok, spans = tok.get_vocab_size(with_added_tokens=True), span_corruption.lengths(dc.seq_len).spans
        if n_tok > cfg.vocab_size - spans:
            raise DataError(f"span corruption uses the top {spans} ids of model.vocab_size={cfg.vocab_size} as "
                            f"sentinels, but the tokenizer has {n_tok} ids; use data.vocab_size <= "
                            f"{cfg.vocab_size - spans} or raise model.vocab_size to >= {n_tok + spans}.")
    sp = text.special_ids(tok)
    if task == "mlm" and sp["mask"] is None:
        raise DataError("the mlm task needs a mask token; the tokenizer has none ([MASK] / <mask>).")
    train_arr, names = _arrays(task, train_rows, tok, sp, dc, template=template)
    sft_info = names if task == "sft" else None
    names = None if task == "sft" else names
    info: dict[str, Any] = {"train_rows": len(next(iter(train_rows.values()))),
                            "tokenizer_vocab": tok.get_vocab_size(with_added_tokens=True)}
    eval_data = None
    if eval_rows is not None and len(next(iter(eval_rows.values()))):
        try:
            eval_arr, _ = _arrays(task, eval_rows, tok, sp, dc, names, template=template)
            eval_data = packing.ArrayData(eval_arr, run.train.seed)
        except ValueError as e:  # e.g. the held-out text is shorter than one block
            info["eval_skipped"] = str(e)
    if task == "classification":
        info["labels"] = names
        n_labels = getattr(cfg, "num_labels", None)
        if n_labels is not None and len(names) > n_labels:
            raise DataError(f"the data has {len(names)} labels {names[:10]} but model.num_labels={n_labels}; "
                            f"set model.num_labels={len(names)}.")
    if task == "causal_lm":
        info["unigram_entropy"] = unigram_entropy(train_arr["targets"], train_arr["weights"])
        info["train_tokens"] = int(train_arr["weights"].sum())
    if sft_info is not None:
        info |= {"conversations": sft_info["conversations"], "truncated": sft_info["truncated"],
                 "train_tokens": sft_info["assistant_tokens"]}
    info["train_examples"] = len(next(iter(train_arr.values())))
    info["eval_examples"] = 0 if eval_data is None else len(eval_data)
    return Prepared(packing.ArrayData(train_arr, run.train.seed), eval_data, tok, sp, info)


def task_options(run, prep: Prepared) -> dict:
    """Options of :func:`jaxlm.train.tasks.make_task` that depend on the config and the tokenizer."""
    t = run.train
    opts = {"label_smoothing": t.label_smoothing, "z_loss": t.z_loss, "dropout": t.dropout,
            "mlm_prob": t.mlm_prob}
    if t.task == "dpo":
        opts["beta"] = t.dpo_beta
    if t.task == "mlm":
        n = prep.tokenizer.get_vocab_size(with_added_tokens=True)
        specials = [i for i in prep.specials.values() if i is not None]
        low = max(specials) + 1 if specials and max(specials) < 32 else 0
        opts |= {"mask_id": prep.specials["mask"], "random_low": low, "random_high": min(n, run.model.vocab_size)}
    return opts


__all__ = ["Prepared", "eval_rows", "prepare", "task_options", "unigram_entropy", "TOKENIZER_FILE", "DataError"]


def eval_rows(run) -> dict[str, list] | None:
    """The columns of the rows ``run`` evaluates on (``data.eval_path``, ``data.eval_split``, or the rows
    held out by ``data.eval_fraction``), exactly as training split them: e.g. ``source``/``target`` for
    seq2seq, ``query``/``text``/``answer``/``answer_start`` for span. None when nothing is held out."""
    return _rows(run.data, run.train.task)[1]
