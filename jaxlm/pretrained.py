"""One loader for every place a trained model can come from.

:func:`load` takes a jaxlm run directory, a Hugging Face checkpoint directory (or hub id, when online) or a
GGUF file, and returns a :class:`Loaded` record: the family module, its Config, the params tree and the
tokenizer (a ``tokenizers.Tokenizer``) when one is available. ``jaxlm generate`` and ``jaxlm eval`` use it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any


@dataclass
class Loaded:
    family: ModuleType  # e.g. jaxlm.models.gpt2
    config: Any  # the family's frozen Config
    params: dict
    tokenizer: Any | None = None  # tokenizers.Tokenizer
    source: str = ""
    extra: dict | None = None  # e.g. chat template, special token ids


def kind(path: str | Path) -> str:
    """``"run"`` (a jaxlm run directory), ``"hf"`` (a Hugging Face directory or hub id) or ``"gguf"``."""
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return "gguf"
    if p.is_dir():
        cfg = p / "config.json"
        if cfg.exists():
            try:
                data = json.loads(cfg.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{cfg} is not valid JSON: {e}") from e
            return "run" if "model" in data and "train" in data else "hf"
        if (p / "checkpoints").is_dir():
            return "run"
        raise FileNotFoundError(
            f"{p} holds neither a jaxlm run (config.json + checkpoints/) nor a Hugging Face checkpoint "
            f"(config.json + *.safetensors)."
        )
    if p.exists():
        raise ValueError(f"{p} is a file but not a .gguf checkpoint; give a run directory, HF directory or .gguf.")
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", str(path)) and not str(path).endswith((".gguf", ".json")):
        return "hf"  # a hub id such as "gpt2" or "org/name"; the HF loader resolves it when online
    raise FileNotFoundError(f"{path} does not exist (not a run directory, HF directory, .gguf file or hub id).")


def load(path: str | Path, **kw: Any) -> Loaded:
    """Load a model from a run directory, Hugging Face directory / hub id, or GGUF file."""
    k = kind(path)
    if k == "run":
        from jaxlm.train import checkpoint

        return checkpoint.load_run(path, **kw)
    if k == "gguf":
        from jaxlm.convert import gguf

        return gguf.load(path, **kw)
    from jaxlm.convert import hf

    return hf.load(path, **kw)
