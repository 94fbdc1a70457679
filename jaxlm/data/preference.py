"""Preference pairs (prompt, chosen, rejected) as DPO batch arrays (:mod:`jaxlm.finetune.dpo` holds the loss)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxlm.data.packing import pad_to
from jaxlm.data.text import DataError


class PreferenceDataError(DataError):
    """A preference pair that cannot be trained on."""


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
