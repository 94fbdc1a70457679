"""Hugging Face chat templates and supervised fine-tuning (SFT) data on conversations.

:func:`apply_chat_template` renders a conversation; ``jaxlm generate --chat`` prompts with it and the SFT
data below is built with it, so a model is trained on exactly the text it is later prompted with.

SFT: a conversation is ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``. It is rendered one
turn at a time: the text an assistant turn adds after the template's generation prompt (its content and
end-of-turn marker) is trained on; everything else (system, user, the template's role headers) is context.
Each piece is tokenized on its own, so the mask is exact at token level. Conversations are packed whole into
rows with segment ids and restarting positions, so none attends to another. The arrays are the ``causal_lm``
layout (``inputs``, ``targets``, ``weights``, ``segment_ids``, ``positions`` [N, T]) with ``weights`` = 1
exactly where the target token is an assistant token. (This lives in ``data/`` so the run pipeline can build
it; :mod:`jaxlm.finetune.sft` re-exports it.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.data.text import DataError


def apply_chat_template(template: str, messages: list[dict], *, add_generation_prompt: bool = True,
                        **kw: Any) -> str:
    """Render a Hugging Face chat template (Jinja) for ``messages`` ``[{"role", "content"}, ...]``;
    ``kw`` (e.g. ``bos_token``) are passed to the template."""
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("rendering a chat template needs jinja2 (pip install jinja2).") from None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(msg):
        raise ValueError(f"chat template: {msg}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **kw)


def template_kwargs(tok, extra: dict | None) -> dict[str, str]:
    """``bos_token`` / ``eos_token`` for a template, from a checkpoint's ``extra`` (``bos_id``, ``eos_id``)
    and its tokenizer."""
    extra = extra or {}
    return {f"{k}_token": tok.id_to_token(extra[f"{k}_id"]) for k in ("bos", "eos") if extra.get(f"{k}_id") is not None}


def load_template(path: str | Path) -> str | None:
    """A chat template from ``path``: a ``.jinja`` file, or a checkpoint / tokenizer directory holding
    ``chat_template.jinja``, a ``tokenizer_config.json`` with ``chat_template`` or jaxlm's ``extra.json``;
    None when there is none. (A file that is not a template is read as one.)"""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix != ".json":
        return p.read_text()
    d = p if p.is_dir() else p.parent
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text()
    for name in ("tokenizer_config.json", "extra.json"):
        if (d / name).is_file():
            t = json.loads((d / name).read_text()).get("chat_template")
            if isinstance(t, str) and t:
                return t
    return None


ROLES = ("system", "user", "assistant", "tool")


class ChatDataError(DataError):
    """A conversation or template that cannot be rendered into SFT examples."""


def check_conversation(messages, where: str = "conversation") -> list[dict]:
    """``messages`` as a list of ``{"role", "content"}`` dicts, or a ChatDataError naming what is wrong."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatDataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} dicts, got "
                            f"{type(messages).__name__}.")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ChatDataError(f"{where}: message {i} must be a dict with 'role' and 'content', got {m!r:.80}.")
        if m["role"] not in ROLES:
            raise ChatDataError(f"{where}: message {i} has role {m['role']!r}; roles are {ROLES}.")
    if not any(m["role"] == "assistant" for m in messages):
        raise ChatDataError(f"{where}: no assistant message, so nothing to train on.")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render(messages: list[dict], template: str, **kw) -> list[tuple[str, bool]]:
    """The rendered conversation as ``[(text, is_assistant)]`` pieces whose concatenation is the full
    rendering. Raises ChatDataError when the template is not prefix-stable (rendering more turns changes
    the text of earlier ones), since then no assistant span can be cut out exactly."""
    if not template:
        raise ChatDataError("the tokenizer has no chat template; SFT on conversations needs the checkpoint's "
                            "chat template (a model imported with `jaxlm convert` from a chat model, or a "
                            "chat_template.jinja file in the checkpoint directory).")
    pieces, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = apply_chat_template(template, messages[:i], add_generation_prompt=True, **kw)
        full = apply_chat_template(template, messages[: i + 1], add_generation_prompt=False, **kw)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ChatDataError("the chat template is not prefix-stable (rendering a later turn changes the text "
                                "of an earlier one), so the assistant's tokens cannot be masked exactly.")
        pieces += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    return [(t, a) for t, a in pieces if t]


def encode(messages: list[dict], tok, template: str, **kw) -> tuple[np.ndarray, np.ndarray]:
    """(token ids [n], assistant [n] bool) of one conversation; ``tok`` is a ``tokenizers.Tokenizer``. The
    template already holds the special tokens, so none are added."""
    ids, mask = [], []
    for text, is_assistant in render(check_conversation(messages), template, **kw):
        t = tok.encode(text, add_special_tokens=False).ids
        ids += t
        mask += [is_assistant] * len(t)
    return np.asarray(ids, np.int32), np.asarray(mask, bool)


def pack(examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int = 0
         ) -> tuple[dict[str, np.ndarray], int]:
    """Pack (ids, assistant) conversations into ``[N, seq_len]`` causal-LM rows, whole conversations only
    (greedy, in order: a conversation that does not fit in the current row starts the next one). Returns
    the arrays (``inputs``, ``targets``, ``weights``, ``segment_ids`` 1, 2, ... per conversation and 0 for
    padding, ``positions`` restarting per conversation) and the number of conversations truncated to
    ``seq_len + 1`` tokens. ``weights[r, t] = 1`` iff ``targets[r, t]`` is an assistant token of the same
    conversation as ``inputs[r, t]``."""
    width = seq_len + 1  # a conversation of n tokens gives n - 1 (input, target) pairs
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
    used, truncated = 0, 0
    for ids, mask in examples:
        if len(ids) > width:
            ids, mask, truncated = ids[:width], mask[:width], truncated + 1
        if len(ids) < 2:
            continue
        n = len(ids) - 1  # slots this conversation takes in a row
        if used + n > seq_len and rows[-1]:
            rows.append([])
            used = 0
        rows[-1].append((ids, mask))
        used += n
    if not rows[-1]:
        rows.pop()
    if not rows:
        raise ChatDataError("no conversation has two or more tokens to train on.")
    N = len(rows)
    out = {"inputs": np.full((N, seq_len), pad_id, np.int32), "targets": np.full((N, seq_len), pad_id, np.int32),
           "weights": np.zeros((N, seq_len), np.float32), "segment_ids": np.zeros((N, seq_len), np.int32),
           "positions": np.zeros((N, seq_len), np.int32)}
    for r, row in enumerate(rows):
        t = 0
        for s, (ids, mask) in enumerate(row, start=1):
            n = len(ids) - 1
            out["inputs"][r, t:t + n] = ids[:-1]
            out["targets"][r, t:t + n] = ids[1:]
            out["weights"][r, t:t + n] = mask[1:]
            out["segment_ids"][r, t:t + n] = s
            out["positions"][r, t:t + n] = np.arange(n)
            t += n
    return out, truncated


def build(conversations: Sequence, tok, template: str, seq_len: int, *, pad_id: int = 0, **kw
          ) -> tuple[dict[str, np.ndarray], dict]:
    """Encode and pack ``conversations`` (each a ``messages`` list); returns (arrays, info) with info
    ``conversations``, ``rows``, ``truncated``, ``assistant_tokens`` (trained targets) and ``tokens``."""
    ex = [encode(check_conversation(m, f"conversation {i}"), tok, template, **kw) for i, m in enumerate(conversations)]
    arrays, truncated = pack(ex, seq_len, pad_id)
    info = {"conversations": len(ex), "rows": len(arrays["inputs"]), "truncated": truncated,
            "assistant_tokens": int(arrays["weights"].sum()), "tokens": int((arrays["segment_ids"] > 0).sum())}
    return arrays, info


def messages_column(rows: dict, column: str = "messages", where: str = "data") -> list:
    """The conversations of a loaded table (``{column: [...]}``), or a ChatDataError naming the columns."""
    if column not in rows:
        raise ChatDataError(f"{where} has no {column!r} field (columns: {sorted(rows)}); SFT data needs one "
                            f"conversation per row as {column!r}: [{{'role': ..., 'content': ...}}, ...].")
    return list(rows[column])
