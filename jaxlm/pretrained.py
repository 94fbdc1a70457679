"""One loader for every place a trained model can come from.

:func:`load` takes a jaxlm run directory, a Hugging Face checkpoint directory (or hub id, when online) or a
GGUF file, and returns a :class:`Loaded` record: the family module, its Config, the params tree and the
tokenizer (a ``tokenizers.Tokenizer``) when one is available. ``jaxlm generate`` and ``jaxlm eval`` use it.
:func:`load_run` reads a training run directory (its Orbax checkpoints, config and tokenizer).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxlm import params as P
from jaxlm.convert import gguf, hf
from jaxlm.data import text
from jaxlm.models import family_of
from jaxlm.models.base import Loaded
from jaxlm.train import config as C
from jaxlm.train.checkpoint import Checkpointer

log = logging.getLogger(__name__)

__all__ = ["Loaded", "kind", "load", "load_run"]


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
        return load_run(path, **kw)
    if k == "gguf":
        return gguf.load(path, **kw)
    return hf.load(path, **kw)


def load_run(run_dir: str | Path, step: int | str | None = None, dtype: str | None = None, **_: Any) -> Loaded:
    """A trained run as :class:`Loaded`: family module, model Config, params (newest good checkpoint, or
    ``step``: a number, ``"best"`` by the run's ``train.best_metric``, or ``"latest"``),
    ``tokenizers.Tokenizer`` (or None) and ``extra`` = {"run": RunConfig, "step": int, "specials": {pad,
    bos, eos, unk, mask ids}}. ``dtype`` casts floating params. A LoRA run (``finetune.lora``) comes back
    with its adapters merged into the base and ``extra`` also holding ``lora``, ``adapters``, ``lora_base``."""
    run_dir = Path(run_dir)
    run = C.load(run_dir / "config.json")
    cfg = run.model
    family = family_of(cfg)
    ck = Checkpointer(run_dir, best_metric=run.train.best_metric, best_mode=run.train.best_mode, read_only=True,
                      report=lambda m: log.warning(m))
    lora_extra = {}
    try:
        if run.finetune.lora.enabled:  # the checkpoint holds adapters: merged into the frozen base on load
            params, s, lora_extra = _load_lora(run, run_dir, ck, step)
        else:
            params, s = ck.restore_params(P.abstract(family.spec(cfg)), step)
    finally:
        ck.manager.close()
    if dtype is not None:
        params = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    tok, specials = None, {}
    if (run_dir / "tokenizer.json").is_file():
        tok = text.load_tokenizer(run_dir / "tokenizer.json")
        specials = text.special_ids(tok)
    return Loaded(family=family, config=cfg, params=params, tokenizer=tok, source=str(run_dir),
                  extra={"run": run, "step": s, "specials": specials} | lora_extra)


def _load_lora(run, run_dir: Path, ck: Checkpointer, step) -> tuple[dict, int, dict]:
    """A LoRA run's (merged params, step, {"lora": LoRAConfig, "adapters": the trained tree, "lora_base":
    where the base came from}): the base rebuilt as training did (:func:`jaxlm.train.setup.lora_base`), the
    adapters (and any parameter trained in full) restored from the checkpoint and folded in
    (:func:`jaxlm.finetune.lora.merge`), so the model decodes at the base model's speed."""
    from jaxlm.finetune import lora
    from jaxlm.train.setup import lora_base

    cfg, lcfg = run.model, run.finetune.lora.config()
    base, rec, new = lora_base(run, run_dir)
    model_abs = P.flatten(P.abstract(family_of(cfg).spec(cfg)))
    target = P.unflatten(P.flatten(P.abstract(lora.spec(cfg, lcfg))) | {k: model_abs[k] for k in new})
    trained, s = ck.restore_params(target, step)
    return lora.merge(base, trained, lcfg), s, {"lora": lcfg, "adapters": trained, "lora_base": rec}


QUANTIZE_CHOICES = ("int8", "int4", "gguf")


def load_quantized(path: str | Path, mode: str, group: int | None = None, embed: bool = False,
                   report: Callable[[str], None] | None = None, **kw: Any) -> Loaded:
    """:func:`load`, then weight-only quantization (:mod:`jaxlm.nn.quant`): ``mode="int8"`` (per output
    channel) or ``"int4"`` (``group`` values per scale; without it 128, or per weight whose input size is not
    a multiple of 128 the largest even size that divides it, named to ``report`` in one line) on every matmul
    weight (``embed``: the token table and an untied head too); ``"gguf"`` keeps a GGUF file's own
    Q8_0/Q4_0/Q4_1 blocks. A model that is already quantized (a directory written by ``jaxlm convert
    --quantize``) is returned as it is."""
    import dataclasses

    from jaxlm.nn import quant

    if mode not in QUANTIZE_CHOICES:
        raise ValueError(f"unknown quantization {mode!r}; choose one of {QUANTIZE_CHOICES}.")
    if mode == "gguf":
        if kind(path) != "gguf":
            raise ValueError(f"--quantize gguf keeps a GGUF file's quantized blocks, but {path} is not a .gguf "
                             f"file: use --quantize int8 or int4.")
        return gguf.load(path, quantized=True, **kw)
    loaded = load(path, **kw)
    if quant.describe(loaded.params):
        return loaded
    params = quant.quantize(loaded.params, loaded.family.spec(loaded.config), mode, group, embed=embed, head=embed,
                            report=report)
    return dataclasses.replace(loaded, params=params)
