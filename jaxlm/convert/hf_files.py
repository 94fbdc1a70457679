"""Reading a Hugging Face checkpoint directory: weights (safetensors or torch .bin), hub downloads,
sentence-transformers module layout, chat template and special token ids. Used by :mod:`jaxlm.convert.hf`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def read_weights(d: Path) -> dict[str, Any]:
    """All tensors of a checkpoint directory as numpy arrays (safetensors, sharded or not; else torch .bin)."""
    st = sorted(d.glob("*.safetensors"))
    if st:
        from safetensors import safe_open

        out = {}
        for f in st:
            # framework="flax" reads bfloat16 too (numpy has no bf16; jax brings ml_dtypes)
            try:
                with safe_open(str(f), framework="flax") as fh:
                    for k in fh.keys():
                        out[k] = np.asarray(fh.get_tensor(k))
            except Exception as e:  # safetensors raises its own error type for truncated/corrupt files
                raise ValueError(f"{f} is not a readable safetensors file ({e}); re-download or re-save it.") from e
        return out
    bins = sorted(d.glob("pytorch_model*.bin"))
    if bins:
        try:
            import torch
        except ImportError:
            raise ImportError(
                f"{d} holds only PyTorch weights ({bins[0].name}); reading them needs torch "
                f"(pip install 'jaxlm[hf]'), or convert the checkpoint to safetensors first."
            ) from None
        out = {}
        for f in bins:
            sd = torch.load(str(f), map_location="cpu", weights_only=True)
            for k, v in sd.items():
                out[k] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
        return out
    raise FileNotFoundError(
        f"{d} has a config.json but no weights: expected model.safetensors (or model-*.safetensors shards) "
        f"or pytorch_model.bin."
    )


def resolve(path_or_id: str | Path) -> Path:
    p = Path(path_or_id)
    if p.exists():
        return p
    if str(path_or_id).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{path_or_id} does not exist.")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(f"{path_or_id!r} is not a local directory; downloading it from the Hugging Face hub "
                          f"needs huggingface_hub (pip install huggingface_hub).") from None
    try:
        return Path(snapshot_download(str(path_or_id), allow_patterns=[
            "*.json", "*.safetensors", "*.txt", "tokenizer.model", "*.jinja", "1_Pooling/*"]))
    except Exception as e:  # offline, unknown repo, gated model
        raise FileNotFoundError(f"{path_or_id!r} is neither a local directory nor a hub id that could be "
                                f"downloaded ({type(e).__name__}: {e}).") from e


def sentence_transformers_info(d: Path) -> tuple[Path, dict | None]:
    """(directory holding the Transformer module's config.json, pooling/normalize settings or None)."""
    mods_f = d / "modules.json"
    if not mods_f.is_file():
        return d, None
    mods = json.loads(mods_f.read_text())
    info: dict[str, Any] = {"pooling": "mean", "normalize": False, "max_seq_length": None}
    model_dir = d
    for m in mods:
        t, sub = m.get("type", ""), d / m.get("path", "")
        if t.endswith("Transformer"):
            model_dir = sub
            for f in ("sentence_bert_config.json",):
                if (sub / f).is_file():
                    info["max_seq_length"] = json.loads((sub / f).read_text()).get("max_seq_length")
        elif t.endswith("Pooling") and (sub / "config.json").is_file():
            pc = json.loads((sub / "config.json").read_text())
            modes = [k[len("pooling_mode_"):].removesuffix("_token").removesuffix("_tokens")
                     for k, v in pc.items() if k.startswith("pooling_mode_") and v]
            info["pooling"] = modes[0] if len(modes) == 1 else modes
        elif t.endswith("Normalize"):
            info["normalize"] = True
    return model_dir, info


def chat_template(d: Path) -> str | None:
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text()
    tc = d / "tokenizer_config.json"
    if tc.is_file():
        t = json.loads(tc.read_text()).get("chat_template")
        if isinstance(t, str):
            return t
    return None


def special_ids(d: Path, hc: dict) -> dict:
    out = {"bos_id": hc.get("bos_token_id"), "eos_id": hc.get("eos_token_id")}
    gc = d / "generation_config.json"
    if gc.is_file():
        g = json.loads(gc.read_text())
        out["bos_id"] = g.get("bos_token_id", out["bos_id"])
        out["eos_id"] = g.get("eos_token_id", out["eos_id"])
    eos = out["eos_id"]
    out["stop_ids"] = [] if eos is None else list(eos) if isinstance(eos, list) else [eos]
    if isinstance(eos, list):
        out["eos_id"] = eos[0] if eos else None
    return out
