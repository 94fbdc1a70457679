"""Hugging Face chat templates: rendering conversations, shared by ``jaxlm generate --chat`` and the SFT data
of :mod:`jaxlm.finetune.sft` (so a model is trained on exactly the text it is prompted with)."""

from __future__ import annotations

from typing import Any


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
