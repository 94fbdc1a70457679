"""Checking and batching user inputs to :func:`jaxlm.generate.generate` and :func:`~jaxlm.generate.beam_search`.

Everything here runs on the host before anything is jitted, so a bad argument gives one clear error that
names the fix instead of a failure deep inside a trace.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from jaxlm.models import FAMILIES, family_of

BUCKET = 16  # prompt widths are rounded up to a multiple of this


@dataclass(frozen=True)
class Batch:
    """Prompts packed into one array.

    ``tokens`` [B, P] int32 (P = the longest prompt rounded up to a multiple of :data:`BUCKET`),
    ``lengths`` [B] int32. Decoder prompts are *left*-padded (every prompt ends at
    slot P - 1, so the first new token goes to slot P for all rows); encoder sources are *right*-padded (the
    encoder numbers positions from slot 0).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    left_padded: bool


def is_encoder_decoder(cfg) -> bool:
    return family_of(cfg).KIND == "encoder-decoder"


def _as_prompt_list(prompts) -> list[np.ndarray]:
    if isinstance(prompts, np.ndarray) or hasattr(prompts, "__array__") and not isinstance(prompts, list | tuple):
        arr = np.asarray(prompts)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2:
            raise ValueError(f"prompts must be a [batch, length] array or a list of token-id lists, got shape "
                             f"{arr.shape}.")
        return [row for row in arr]
    if isinstance(prompts, str):
        raise ValueError("prompts must be token ids, not text: encode the text with the model's tokenizer first "
                         "(e.g. tokenizer.encode(text).ids).")
    if not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("prompts is empty: give a list of token-id lists (one per prompt) or a [B, T] array.")
    if all(isinstance(t, int | np.integer) for t in prompts):  # one prompt given as a flat list of ids
        prompts = [prompts]
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            raise ValueError(f"prompt {i} is text; encode it with the model's tokenizer first.")
        arr = np.asarray(p)
        if arr.ndim != 1:
            raise ValueError(f"prompt {i} must be a flat list of token ids, got shape {arr.shape}.")
        out.append(arr)
    return out


def check_ids(ids: np.ndarray, vocab_size: int, what: str) -> None:
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{what} must be integer token ids, got dtype {ids.dtype}.")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids.max()) if ids.max() >= vocab_size else int(ids.min())
        raise ValueError(
            f"{what} contain token id {bad}, outside [0, {vocab_size}): the tokenizer and the model disagree; "
            f"use the model's own tokenizer (vocab_size={vocab_size})."
        )


def prepare(prompts, cfg, max_new_tokens: int) -> Batch:
    """Validate ``prompts`` (list of token-id lists or an int array [B, T]) against ``cfg`` and pad them.

    Errors name the fix for: no prompts, an empty prompt, ids outside the vocabulary, a prompt that does not
    fit the model's context together with ``max_new_tokens``.
    """
    family = getattr(type(cfg), "family", None)
    if family not in FAMILIES or family_of(cfg).KIND == "encoder":
        able = sorted(n for n, m in FAMILIES.items() if m.KIND != "encoder")
        raise ValueError(f"generation needs a model with a causal decoder ({', '.join(able)}), got a {family!r} "
                         f"config: encoders (KIND 'encoder') do not generate text.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int | np.integer) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive integer (e.g. 32).")
    rows = _as_prompt_list(prompts)
    encdec = is_encoder_decoder(cfg)
    what = "source" if encdec else "prompt"
    for i, r in enumerate(rows):
        if r.size == 0:
            fix = ("give at least one source token" if encdec else
                   "give at least one token (e.g. the tokenizer's BOS / end-of-text id)")
            raise ValueError(f"{what} {i} is empty: {fix}.")
        check_ids(r, cfg.vocab_size, f"{what} {i}")
    lengths = np.array([len(r) for r in rows], np.int32)
    longest = int(lengths.max())
    C = cfg.max_len
    if encdec:
        if longest > C:
            raise ValueError(f"source {int(lengths.argmax())} has {longest} tokens, longer than the model's "
                             f"context max_len={C}: truncate it to {C} tokens.")
        if max_new_tokens > C:
            raise ValueError(f"max_new_tokens={max_new_tokens} exceeds the decoder's context max_len={C}: "
                             f"use max_new_tokens <= {C}.")
    else:
        if longest > C:
            keep = max(C - max_new_tokens, 1)
            raise ValueError(f"prompt {int(lengths.argmax())} has {longest} tokens, longer than the model's "
                             f"context max_len={C}: keep its last {keep} tokens and use max_new_tokens <= "
                             f"{C - keep} (prompt + max_new_tokens must fit in {C}).")
        if longest + max_new_tokens > C:
            raise ValueError(f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} = "
                             f"{longest + max_new_tokens} exceeds the model's context max_len={C}: lower "
                             f"max_new_tokens to {C - longest} or shorten the prompt to "
                             f"{max(C - max_new_tokens, 1)} tokens.")
    pad = cfg.pad_id
    # pad to a multiple of BUCKET (padding is masked, so results do not change): batches whose longest
    # prompts differ by a few tokens share one compiled program
    width = -(-longest // BUCKET) * BUCKET
    if encdec:
        width = min(width, C)  # the encoder's positions must stay inside its context
    tokens = np.full((len(rows), width), pad, np.int32)
    for i, r in enumerate(rows):
        if encdec:
            tokens[i, : len(r)] = r
        else:
            tokens[i, width - len(r):] = r
    return Batch(tokens, lengths, left_padded=not encdec)


def check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an integer >= 0 (e.g. 0).")


def stop_ids(cfg, stop_tokens: Iterable[int] | int | None, eos_id: int | None = None) -> tuple[int, ...]:
    """The set of ids that end a sequence: ``stop_tokens`` (+ ``eos_id``); for the encoder-decoder
    ``cfg.eos_id`` always stops. Returns a sorted tuple (hashable, so jit caches on it)."""
    if stop_tokens is None:
        ids: set[int] = set()
    elif isinstance(stop_tokens, int | np.integer):
        ids = {int(stop_tokens)}
    else:
        ids = {int(t) for t in stop_tokens}
    if eos_id is not None:
        ids.add(int(eos_id))
    if is_encoder_decoder(cfg):
        ids.add(int(cfg.eos_id))
    check_ids(np.array(sorted(ids), np.int64), cfg.vocab_size, "stop_tokens")
    return tuple(sorted(ids))


def stop_array(stop: tuple[int, ...]) -> np.ndarray:
    """Stop ids as an int32 array padded with -1 (never a token) to at least 4 entries / a power of two: the
    ids are a traced argument, so different stop sets of similar size share one compiled program."""
    n = max(4, 1 << (len(stop) - 1).bit_length()) if stop else 4
    out = np.full((n,), -1, np.int32)
    out[: len(stop)] = stop
    return out


def cache_len(batch: Batch, cfg, max_new_tokens: int, max_len: int | None) -> int:
    """Slots the KV cache needs: the prompt (decoders) or BOS (enc-dec) plus every new token but the last
    (which is never fed back); ``max_len`` may ask for more (to reuse one compiled program across prompt
    lengths), never fewer."""
    need = (1 if not batch.left_padded else batch.tokens.shape[1]) + max_new_tokens - 1
    if max_len is None:
        return need
    if max_len < need:
        raise ValueError(f"max_len={max_len} cannot hold the prompt and max_new_tokens={max_new_tokens} "
                         f"({need} cache slots): pass max_len >= {need} or leave it None.")
    return int(max_len)
