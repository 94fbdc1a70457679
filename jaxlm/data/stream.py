"""Streaming corpora (``data.streaming=true``): a ``datasets.IterableDataset`` tokenized and packed on the fly.

The in-memory pipeline (:mod:`jaxlm.data.pipeline`) tokenizes the whole corpus into arrays first, which is
right for Multi30k and wrong for a pretraining corpus of many GB. Here the files (text / jsonl / parquet /
csv) or the hub dataset are read as a ``datasets`` ``IterableDataset`` (``streaming=True``), split across the
processes of a multi-process run with ``datasets.distributed.split_dataset_by_node``, and each document is
tokenized when it is reached and packed into ``[seq_len + 1]`` blocks exactly as :func:`packing.pack` packs
them (``[doc] [eos]`` concatenated, consecutive blocks overlapping by one token, segment ids / positions /
weights so nothing is predicted across a document boundary). Memory is one document plus one batch, whatever
the corpus size (``benchmarks/data_memory.py``).

Exact resume: :meth:`StreamData.state_dict` is the stream position after the last batch handed out: the
``IterableDataset.state_dict()`` taken just before the document being cut (datasets' own resumable-iteration
state: shard and example index), how many of that document's tokens are used, the unused tail of the
previous documents (fewer than one block), the epoch and the document counter. The checkpoint stores it
(``meta["stream"]``); a resumed run loads it and hands out the batches the uninterrupted run would have.
The order is the corpus order (no shuffle buffer: datasets does not save a shuffle buffer's content in its
state, so a shuffled stream could not resume exactly; pretraining corpora are shuffled when written). At
the end of the corpus the stream starts again (the next epoch).

Evaluation: ``data.eval_path`` / ``data.eval_split``, else the documents whose CRC-32 falls in the
``data.eval_fraction`` bucket are held out (a per-document rule: the same for every process, order and
resume). The first ``train.eval_batches * train.batch_size`` eval blocks are kept in memory.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from jaxlm.data import packing, text
from jaxlm.data.text import DataError

STREAM_TASKS = ("causal_lm",)


def blocks(tok: np.ndarray, seg: np.ndarray) -> dict[str, np.ndarray]:
    """``[N, seq_len + 1]`` token and document-id rows -> the causal-LM arrays of :func:`packing.pack`
    (``inputs``, ``targets``, ``segment_ids``, ``positions``, ``weights``, each ``[N, seq_len]``)."""
    seg_in = seg[:, :-1]
    rel = (seg_in - seg_in[:, :1] + 1).astype(np.int32)
    return {"inputs": tok[:, :-1].astype(np.int32), "targets": tok[:, 1:].astype(np.int32), "segment_ids": rel,
            "positions": packing._segment_positions(rel),
            "weights": (seg[:, 1:] == seg_in).astype(np.float32)}


def held_out(doc: str, fraction: float) -> bool:
    """Whether ``doc`` belongs to the eval bucket of ``fraction`` (by its CRC-32: stable across runs)."""
    if fraction <= 0:
        return False
    k = max(2, round(1 / fraction))
    return zlib.crc32(doc.encode("utf-8")) % k == 0


class StreamData:
    """This process's stream of packed causal-LM batches (see the module docstring).

    ``make(epoch)`` returns a fresh ``IterableDataset`` (already split for this process); ``keep(doc)``
    says whether a document belongs to this stream (train or eval side of the hold-out rule).
    :meth:`batch` must be asked for steps in order (a stream cannot seek); ``local_rows`` marks the batches
    as holding this process's rows only.
    """

    local_rows = True

    def __init__(self, make: Callable[[int], Any], tok, eos_id: int | None, seq_len: int, column: str,
                 keep: Callable[[str], bool] = lambda d: True, world: int = 1):
        self.make, self.tok, self.eos_id, self.seq_len, self.column = make, tok, eos_id, seq_len, column
        self.keep, self.world = keep, world
        self.step = 0  # batches handed out
        self.epoch = 0
        self._docs = 0  # documents started (their ids separate segments)
        self._buf_tok: list[int] = []  # tokens read but not yet in an emitted block (< one block)
        self._buf_seg: list[int] = []
        self._cur: list[int] = []  # the document being cut
        self._cur_pos = 0  # tokens of it already moved to the buffer
        self._before_cur: dict | None = None  # dataset state just before the current document
        self._ds = None
        self._it: Iterator | None = None
        self.arrays = {"inputs": np.zeros((0, seq_len), np.int32)}  # shape facts (seq_len) for the loop

    # -- reading -------------------------------------------------------------------------------------------
    def _open(self, state: dict | None) -> None:
        self._ds = self.make(self.epoch)
        if state is not None:
            self._ds.load_state_dict(state)
        self._it = iter(self._ds)

    def _next_doc(self) -> None:
        """Make the next kept document of the stream current (a new epoch at the end of the corpus)."""
        if self._it is None:
            self._open(self._before_cur)
        empty_epoch = True
        while True:
            before = self._ds.state_dict()
            try:
                ex = next(self._it)
            except StopIteration:
                if empty_epoch and self._before_cur is None:
                    raise DataError("the streamed training data holds no document (every row empty or held "
                                    "out for evaluation); check data.path and data.text_column.") from None
                self.epoch += 1
                self._before_cur = None
                self._open(None)
                empty_epoch = True
                continue
            if self.column not in ex:
                from jaxlm.config import closest

                raise DataError(f"the streamed dataset has no column {self.column!r}"
                                f"{closest(self.column, list(ex))}; its columns are {list(ex)}: set "
                                f"data.text_column.")
            doc = "" if ex[self.column] is None else str(ex[self.column])
            if not doc or not self.keep(doc):
                continue
            empty_epoch = False
            ids = self.tok.encode(doc, add_special_tokens=False).ids
            if self.eos_id is not None:
                ids = [*ids, self.eos_id]
            if not ids:
                continue
            self._before_cur, self._cur, self._cur_pos = before, ids, 0
            self._docs += 1
            return

    def _block(self) -> tuple[list[int], list[int]]:
        width = self.seq_len + 1
        while len(self._buf_tok) < width:
            if self._cur_pos >= len(self._cur):
                self._next_doc()
            take = self._cur[self._cur_pos:self._cur_pos + width - len(self._buf_tok)]
            self._buf_tok += take
            self._buf_seg += [self._docs] * len(take)
            self._cur_pos += len(take)
        tok, seg = self._buf_tok[:width], self._buf_seg[:width]
        # consecutive blocks overlap by one token: the last input of a block is the first of the next
        self._buf_tok, self._buf_seg = self._buf_tok[self.seq_len:], self._buf_seg[self.seq_len:]
        return tok, seg

    def take(self, n: int) -> dict[str, np.ndarray]:
        """The next ``n`` blocks as causal-LM arrays ``[n, seq_len]``."""
        rows = [self._block() for _ in range(n)]
        return blocks(np.asarray([r[0] for r in rows], np.int64), np.asarray([r[1] for r in rows], np.int64))

    # -- the loop's interface --------------------------------------------------------------------------------
    def batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """Batch ``step`` (this process's ``batch_size // world`` rows of it); steps come in order."""
        if step != self.step:
            raise RuntimeError(f"the data stream is at batch {self.step} and cannot seek to {step}; a stream "
                               f"resumes from the position saved in the checkpoint.")
        if batch_size % self.world:
            raise DataError(f"train.batch_size={batch_size} does not divide over {self.world} processes.")
        out = self.take(batch_size // self.world)
        self.step += 1
        return out

    def position(self, step: int, batch_size: int) -> tuple[int, int]:
        """(epoch, batch index) of the stream after ``step`` batches."""
        return self.epoch, step

    def state_dict(self) -> dict:
        """The stream position after the batches handed out so far (JSON-serialisable)."""
        return {"step": self.step, "epoch": self.epoch, "docs": self._docs, "dataset": self._before_cur,
                "doc_tokens_used": self._cur_pos, "buffer": list(self._buf_tok), "buffer_docs": list(self._buf_seg)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s position: the current document is read again (from the saved
        dataset state) and re-tokenized, the buffer restored."""
        self.step, self.epoch, self._docs = int(state["step"]), int(state["epoch"]), int(state["docs"])
        self._buf_tok, self._buf_seg = list(state["buffer"]), list(state["buffer_docs"])
        used = int(state["doc_tokens_used"])
        self._before_cur, self._it, self._cur, self._cur_pos = state["dataset"], None, [], 0
        if state["dataset"] is not None or used:
            docs = self._docs
            self._next_doc()  # reads the document that was being cut
            self._docs, self._cur_pos = docs, used


def _check_tokenizer(dc, have_file: bool) -> None:
    if have_file or dc.tokenizer not in ("char", "bpe"):
        return
    raise DataError(
        f"data.streaming=true reads the corpus once, while training, so it cannot first build "
        f"data.tokenizer={dc.tokenizer!r} from the whole split. Get a tokenizer first: a pretrained one "
        f"(data.tokenizer=PATH of a tokenizer.json, or a folder with GPT-2's vocab.json + merges.txt), or "
        f"train one on a sample without streaming: `jaxlm train EXPERIMENT.py data.streaming=false "
        f"data.max_examples=20000 train.steps=1 --run-dir runs/tok`, then pass "
        f"data.tokenizer=runs/tok/tokenizer.json.")


def open_dataset(dc, path: str, split: str, rank: int, world: int):
    """``path`` (files or a hub id) as an IterableDataset, this process's part (split_dataset_by_node)."""
    from datasets.distributed import split_dataset_by_node

    ds = text.load(path, fmt=dc.format, pattern=dc.glob, sample_by=dc.sample_by, split=split,
                   config=dc.hub_config, local=dc.local, streaming=True, what="data.path")
    return split_dataset_by_node(ds, rank=rank, world_size=world) if world > 1 else ds


def prepare(run, run_dir, tok_file, rank: int = 0, world: int = 1):
    """(train, eval, tokenizer, special ids, info) of a streaming run (causal_lm), the parts of a
    :class:`jaxlm.data.pipeline.Prepared`: train = :class:`StreamData`, eval = the first
    ``eval_batches * batch_size`` blocks of the eval stream, in memory."""
    dc, t = run.data, run.train
    if t.task not in STREAM_TASKS:
        raise DataError(f"data.streaming=true packs documents for {STREAM_TASKS}; train.task={t.task!r} reads "
                        f"its data into memory: set data.streaming=false.")
    have = tok_file is not None and tok_file.is_file()
    _check_tokenizer(dc, have)
    tok = text.load_tokenizer(tok_file if have else dc.tokenizer)
    if tok_file is not None and not have:
        from jaxlm.fileio import write_atomic

        write_atomic(tok_file, lambda p: tok.save(str(p)))
    text.check_vocab(tok, run.model.vocab_size)
    sp = text.special_ids(tok)
    hub = dc.format == "hub" or (dc.format == "auto" and text.looks_like_hub_name(dc.path))
    separate = bool(dc.eval_path) or (hub and bool(dc.eval_split))
    frac = 0.0 if separate else dc.eval_fraction
    max_docs = dc.max_examples

    def make_train(epoch: int):
        ds = open_dataset(dc, dc.path, dc.split, rank, world)
        return ds.take(max_docs) if max_docs is not None and world == 1 else ds

    train = StreamData(make_train, tok, sp["eos"], dc.seq_len, dc.text_column,
                       keep=lambda d: not held_out(d, frac), world=world)
    info: dict[str, Any] = {"streaming": True, "tokenizer_vocab": tok.get_vocab_size(with_added_tokens=True),
                            "processes": world}
    eval_data = None
    if separate or frac > 0:
        src, split = (dc.eval_path, "train") if dc.eval_path else (dc.path, dc.eval_split if separate else dc.split)
        ev = StreamData(lambda e: open_dataset(dc, src, split, 0, 1), tok, sp["eos"], dc.seq_len,
                        dc.text_column, keep=(lambda d: True) if separate else (lambda d: held_out(d, frac)))
        try:
            arr = _first_epoch(ev, t.eval_batches * t.batch_size)
            eval_data = packing.ArrayData(arr, t.seed)
        except DataError as e:
            info["eval_skipped"] = str(e)
    info["eval_examples"] = 0 if eval_data is None else len(eval_data)
    return train, eval_data, tok, sp, info


def _first_epoch(s: StreamData, n: int) -> dict[str, np.ndarray]:
    """Up to ``n`` blocks of ``s``'s first pass over its data (fewer when it holds fewer)."""
    rows = []
    while len(rows) < n:
        blk = s._block()
        if s.epoch > 0:
            break
        rows.append(blk)
    if not rows:
        raise DataError("the evaluation stream holds less than one block of data.seq_len tokens.")
    return blocks(np.asarray([r[0] for r in rows], np.int64), np.asarray([r[1] for r in rows], np.int64))


__all__ = ["STREAM_TASKS", "StreamData", "blocks", "held_out", "open_dataset", "prepare"]
