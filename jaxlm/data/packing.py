"""Fixed-shape arrays from token sequences, and a deterministic, seekable batch order.

- :func:`pack` concatenates documents into fixed-length blocks with segment ids (which document each
  token came from) and per-document positions, so attention and the loss never cross documents.
- :func:`pad_pairs` pads (source, target) pairs for sequence-to-sequence training.
- :func:`pad_single` pads single texts (classification / span extraction).
- :class:`ArrayData` holds the arrays; :meth:`ArrayData.batch` returns batch ``step`` of the order fixed by
  ``(seed, epoch)``, so a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def _segment_positions(seg: np.ndarray) -> np.ndarray:
    """[N, T] segment ids -> [N, T] position of each token within its segment's part of the row."""
    N, T = seg.shape
    idx = np.broadcast_to(np.arange(T), (N, T))
    start = np.ones((N, T), bool)
    start[:, 1:] = seg[:, 1:] != seg[:, :-1]
    first = np.maximum.accumulate(np.where(start, idx, 0), axis=1)
    return (idx - first).astype(np.int32)


def pack(docs: Sequence[np.ndarray], seq_len: int, *, eos_id: int | None = None, bos_id: int | None = None,
         shift: bool = True) -> dict[str, np.ndarray]:
    """Pack token sequences into ``[N, seq_len]`` blocks.

    Each document is ``[bos] + ids + [eos]`` (where given); documents are concatenated and cut into
    consecutive blocks. With ``shift`` (causal LM) a block holds ``seq_len + 1`` tokens and consecutive
    blocks overlap by one, so every token is predicted exactly once; returns ``inputs``, ``targets``,
    ``segment_ids`` (1, 2, ... within each row), ``positions`` (restarting at each document start) and
    ``weights`` (1 where the target belongs to the same document as the input, so no token is predicted
    across a document boundary). Without ``shift`` (masked LM) returns ``tokens``, ``segment_ids``,
    ``positions`` and ``valid``. The last partial block is dropped.
    """
    parts, ids = [], []
    for i, d in enumerate(docs):
        d = np.asarray(d, np.int32)
        if bos_id is not None:
            d = np.concatenate([[bos_id], d]).astype(np.int32)
        if eos_id is not None:
            d = np.concatenate([d, [eos_id]]).astype(np.int32)
        if len(d):
            parts.append(d)
            ids.append(np.full(len(d), i, np.int32))
    if not parts:
        raise ValueError("nothing to pack: every document is empty.")
    stream, doc = np.concatenate(parts), np.concatenate(ids)
    width = seq_len + 1 if shift else seq_len
    n = (len(stream) - 1) // seq_len if shift else len(stream) // seq_len
    if n < 1:
        raise ValueError(f"the data holds {len(stream)} tokens, fewer than one block of {width}; "
                         f"lower data.seq_len or give more text.")
    rows = np.arange(n)[:, None] * seq_len + np.arange(width)[None]  # [N, width]
    tok, seg = stream[rows], doc[rows]
    if shift:
        seg_in = seg[:, :-1]
        rel = (seg_in - seg_in[:, :1] + 1).astype(np.int32)
        return {"inputs": tok[:, :-1], "targets": tok[:, 1:], "segment_ids": rel,
                "positions": _segment_positions(rel), "weights": (seg[:, 1:] == seg_in).astype(np.float32)}
    rel = (seg - seg[:, :1] + 1).astype(np.int32)
    return {"tokens": tok, "segment_ids": rel, "positions": _segment_positions(rel),
            "valid": np.ones_like(tok, bool)}


def pad_to(seqs: Sequence[np.ndarray], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad / truncate to ``[N, length]``; returns (ids, valid)."""
    out = np.full((len(seqs), length), pad_id, np.int32)
    valid = np.zeros((len(seqs), length), bool)
    for i, s in enumerate(seqs):
        s = np.asarray(s, np.int32)[:length]
        out[i, : len(s)] = s
        valid[i, : len(s)] = True
    return out, valid


def pad_pairs(src: Sequence[np.ndarray], tgt: Sequence[np.ndarray], src_len: int, tgt_len: int, *,
              bos_id: int, eos_id: int, pad_id: int) -> dict[str, np.ndarray]:
    """(source, target) pairs -> ``src``/``src_valid`` [N, S] (source + eos), decoder input ``tgt_in``
    (bos + target) and output ``tgt_out`` (target + eos) [N, T] with ``tgt_valid`` / ``weights``."""
    s, sv = pad_to([np.append(x[: src_len - 1], eos_id) for x in src], src_len, pad_id)
    ti, tv = pad_to([np.concatenate([[bos_id], y[: tgt_len - 1]]) for y in tgt], tgt_len, pad_id)
    to, _ = pad_to([np.append(y[: tgt_len - 1], eos_id) for y in tgt], tgt_len, pad_id)
    return {"src": s, "src_valid": sv, "tgt_in": ti, "tgt_out": to, "tgt_valid": tv,
            "weights": tv.astype(np.float32)}


def pad_single(seqs: Sequence[np.ndarray], seq_len: int, *, bos_id: int | None, eos_id: int | None,
               pad_id: int) -> dict[str, np.ndarray]:
    """Texts -> ``tokens`` / ``valid`` [N, seq_len] as ``[bos] ids [eos]`` (BERT's [CLS] ... [SEP])."""
    body = seq_len - (bos_id is not None) - (eos_id is not None)
    rows = []
    for x in seqs:
        x = np.asarray(x, np.int32)[:body]
        if bos_id is not None:
            x = np.concatenate([[bos_id], x])
        if eos_id is not None:
            x = np.concatenate([x, [eos_id]])
        rows.append(x)
    tokens, valid = pad_to(rows, seq_len, pad_id)
    return {"tokens": tokens, "valid": valid}


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of ``n`` examples in ``epoch``: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass
class ArrayData:
    """A dataset of equal-length arrays (leading dim N) with a deterministic, seekable batch order.

    Batch ``step`` (0-based) of size B is rows ``perm[i*B:(i+1)*B]`` of epoch ``step // (N // B)`` where
    ``perm = epoch_permutation(N, seed, epoch)`` and ``i = step % (N // B)``; the last partial batch of each
    epoch is dropped. Nothing is consumed: any step can be asked for in any order.
    """

    arrays: dict[str, np.ndarray]
    seed: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        ns = {k: len(v) for k, v in self.arrays.items()}
        if len(set(ns.values())) != 1:
            raise ValueError(f"arrays differ in length: {ns}")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batches_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size

    def position(self, step: int, batch_size: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of batch ``step``."""
        per = self.batches_per_epoch(batch_size)
        if per < 1:
            raise ValueError(f"the dataset has {len(self)} examples, fewer than one batch of {batch_size}: "
                             f"lower train.batch_size or give more data.")
        return divmod(step, per)

    def indices(self, step: int, batch_size: int) -> np.ndarray:
        epoch, i = self.position(step, batch_size)
        if self._cache.get("epoch") != epoch:
            self._cache = {"epoch": epoch, "perm": epoch_permutation(len(self), self.seed, epoch)}
        return self._cache["perm"][i * batch_size:(i + 1) * batch_size]

    def batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """Batch number ``step`` of the (seed, epoch) order: a dict of ``[batch_size, ...]`` arrays."""
        idx = np.sort(self.indices(step, batch_size))  # sorted: contiguous reads, same set of rows
        return {k: v[idx] for k, v in self.arrays.items()}

    def sequential(self, batch_size: int, max_batches: int | None = None):
        """Batches in stored order (evaluation), at most ``max_batches``; every example is seen.

        Every batch carries ``example_weights`` [B] (1 = a real example, 0 = padding), which every task
        multiplies into its loss weights: the last, partial batch is padded to ``batch_size`` with copies
        of the first row, so evaluation runs one compiled shape that still divides over the data-parallel
        devices."""
        n = -(-len(self) // batch_size)
        if max_batches is not None:
            n = min(n, max_batches)
        for i in range(n):
            lo = i * batch_size
            real = min(batch_size, len(self) - lo)
            idx = np.arange(lo, lo + batch_size)
            idx[real:] = 0
            b = {k: v[idx] for k, v in self.arrays.items()}
            b["example_weights"] = (np.arange(batch_size) < real).astype(np.float32)
            yield b
