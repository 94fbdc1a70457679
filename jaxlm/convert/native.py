"""A jaxlm params directory: what ``jaxlm convert --from-hf SRC --to DIR`` writes.

    DIR/config.json         {"jaxlm_format": "params/1", "family": "llama", "config": {...jaxlm Config...}}
    DIR/params.safetensors  one tensor per jaxlm parameter path ("layers/attn/q/w", ...), in jaxlm layout
    DIR/tokenizer.json      the tokenizer, when the source had one
    DIR/extra.json          chat template, bos/eos/stop ids, the source's HF config, sentence-transformers info

:func:`jaxlm.pretrained.load` reads it (the directory has a config.json without "train", so it is routed to
:func:`jaxlm.convert.hf.load`, which hands it here). Unlike a training run directory it holds no optimizer
state: it is a starting point for fine-tuning, generation and evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxlm import config as config_lib
from jaxlm import params as P
from jaxlm.models import FAMILIES, family_of
from jaxlm.models.base import Loaded

FORMAT = "params/1"


def is_native(config_json: dict) -> bool:
    return "jaxlm_format" in config_json


def save(model: Loaded | tuple, out_dir: str | Path, tokenizer: Any | None = None, extra: dict | None = None) -> Path:
    """Write ``model`` (a :class:`Loaded` or ``(family, cfg, params)``) as a jaxlm params directory."""
    from safetensors.flax import save_file

    if isinstance(model, Loaded):
        cfg, params = model.config, model.params
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        extra = {**(model.extra or {}), **(extra or {})}
    else:
        _, cfg, params = model
        extra = dict(extra or {})
    family = family_of(cfg)
    P.check_params(params, family.spec(cfg))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    head = {"jaxlm_format": FORMAT, "family": type(cfg).family, "config": config_lib.to_dict(cfg)}
    from jaxlm.nn import quant

    layout = quant.describe(params)
    if layout:  # weight-only quantized: each QArray is stored as path/q, path/scale (, path/zero)
        head["quant"] = layout
    (out / "config.json").write_text(json.dumps(head, indent=2, sort_keys=True) + "\n")
    import jax.numpy as jnp

    save_file({k: jnp.asarray(v) for k, v in quant.to_flat_arrays(params).items()}, str(out / "params.safetensors"))
    if tokenizer is not None:
        tokenizer.save(str(out / "tokenizer.json"))
    extra.pop("source_dir", None)  # tokenizer files now live here
    (out / "extra.json").write_text(json.dumps(extra, indent=2, default=str) + "\n")
    return out


def load(path: str | Path, dtype: str | None = None, tokenizer: bool = True) -> Loaded:
    """Read a jaxlm params directory written by :func:`save`."""
    from safetensors.flax import load_file

    d = Path(path)
    head = json.loads((d / "config.json").read_text())
    if head.get("jaxlm_format") != FORMAT:
        raise ValueError(f"{d}: unknown jaxlm params format {head.get('jaxlm_format')!r}; this jaxlm reads {FORMAT!r}.")
    if head.get("family") not in FAMILIES:
        raise ValueError(f"{d}: unknown family {head.get('family')!r}; known: {sorted(FAMILIES)}.")
    cfg = config_lib.from_dict(head["config"])
    family = family_of(cfg)
    if not (d / "params.safetensors").is_file():
        raise FileNotFoundError(f"{d} has a jaxlm config.json but no params.safetensors.")
    from jaxlm.nn import quant

    # a quantized directory (jaxlm convert --quantize) loads back as QArrays, without re-quantizing
    params = quant.from_flat_arrays(load_file(str(d / "params.safetensors")), head.get("quant") or {})
    P.check_params(params, family.spec(cfg), what=f"params of {d}")
    if dtype is not None:
        import jax.numpy as jnp

        cfg = cfg.replace(dtype=dtype, param_dtype=dtype)
        params = P.unflatten({k: v if quant.is_quantized(v) else jnp.asarray(v, dtype)
                              for k, v in P.flatten(params).items()})
    tok = None
    if tokenizer and (d / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        from jaxlm.convert.tokenizer import check_vocab

        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        check_vocab(tok, cfg.vocab_size, str(d))
    extra = json.loads((d / "extra.json").read_text()) if (d / "extra.json").is_file() else {}
    return Loaded(family=family, config=cfg, params=params, tokenizer=tok, source=str(d), extra=extra)
