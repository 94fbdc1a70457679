"""Hugging Face PEFT interop: LoRA adapters to and from a PEFT adapter directory
(``adapter_config.json`` + ``adapter_model.safetensors``), so ``peft.PeftModel.from_pretrained`` loads
jaxlm's adapters onto the transformers model (exported with :func:`jaxlm.convert.hf.save`) and jaxlm loads
adapters trained with PEFT.

The tensor names and layouts come from the family's Hugging Face mapping (``HF.rules``): an adapted weight
whose rule is ``linear<n>`` (a torch ``nn.Linear`` ``[out, in]``) maps to PEFT's ``lora_A.weight`` ``[r, in]``
and ``lora_B.weight`` ``[out, r]``. Weights stored fused or as GPT-2's ``Conv1D`` have no per-projection
PEFT layout and are refused. Written with ``safetensors`` and ``json`` only: ``peft`` itself is needed by
whoever loads the directory, not here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from jaxlm import params as P
from jaxlm.config import ConfigError
from jaxlm.finetune import lora
from jaxlm.models import family_of

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel wraps the transformers model as base_model.model


def _rules(model_cfg) -> dict[str, tuple[str, str]]:
    """``{projection path: (HF module name with {i}, op)}`` for the family's linear weights."""
    hf = getattr(family_of(model_cfg), "HF", None)
    if hf is None:
        raise ConfigError(f"{type(model_cfg).family} has no Hugging Face mapping, so no PEFT layout.")
    out = {}
    for ours, theirs, op in hf.rules:
        if ours.endswith("/w") and theirs.endswith(".weight"):
            out[ours[:-2]] = (theirs[: -len(".weight")], op)
    return out


def _rule(rules, path):
    if path not in rules or not rules[path][1].startswith("linear"):
        raise ConfigError(f"{path} has no per-projection nn.Linear in the Hugging Face model "
                          f"({rules.get(path, ('', 'no rule'))[1]}), so PEFT cannot hold its adapter; adapt "
                          f"other projections.")
    return rules[path]


def export(adapters: dict, model_cfg, cfg: lora.LoRAConfig, out_dir: str | Path,
           base_model: str = "", task_type: str = "CAUSAL_LM") -> Path:
    """Write ``adapters`` (of :func:`jaxlm.finetune.lora.spec`) as a PEFT LoRA directory; returns it."""
    from safetensors.numpy import save_file

    rules = _rules(model_cfg)
    flat = {k: np.asarray(v, np.float32) for k, v in P.flatten(adapters).items()}
    paths = sorted({k.rsplit("/", 1)[0] for k in flat})
    tensors, modules = {}, []
    for path in paths:
        name, _ = _rule(rules, path)
        a, b = flat[f"{path}/lora_a"], flat[f"{path}/lora_b"]
        stacked = "{i}" in name
        n_layers = a.shape[0] if stacked else 1
        for i in range(n_layers):
            ai, bi = (a[i], b[i]) if stacked else (a, b)
            r = ai.shape[-1]
            mod = name.format(i=i)
            tensors[f"{PREFIX}{mod}.lora_A.weight"] = np.ascontiguousarray(ai.reshape(-1, r).T)  # [r, in]
            tensors[f"{PREFIX}{mod}.lora_B.weight"] = np.ascontiguousarray(bi.reshape(r, -1).T)  # [out, r]
        modules.append(re.escape(name).replace(re.escape("{i}"), r"\d+"))
    conf = {"peft_type": "LORA", "task_type": task_type, "r": cfg.rank, "lora_alpha": cfg.alpha,
            "lora_dropout": cfg.dropout, "target_modules": "|".join(f"(?:{m})" for m in modules),
            "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
            "init_lora_weights": True, "base_model_name_or_path": base_model or None, "modules_to_save": None,
            "inference_mode": True, "revision": None}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(conf, indent=2) + "\n")
    return out


def load(adapter_dir: str | Path, model_cfg) -> tuple[lora.LoRAConfig, dict]:
    """A PEFT LoRA directory -> (LoRAConfig, adapters) for ``model_cfg``: ``combine`` or ``merge`` them with
    the base params loaded by :func:`jaxlm.pretrained.load`. Only plain LoRA (no DoRA, rsLoRA, per-module
    ranks or trained biases)."""
    from safetensors.numpy import load_file

    d = Path(adapter_dir)
    if not (d / CONFIG_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{d} is not a PEFT adapter directory: it needs {CONFIG_FILE} and {WEIGHTS_FILE}.")
    conf = json.loads((d / CONFIG_FILE).read_text())
    if conf.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{d}: peft_type {conf.get('peft_type')!r} is not LORA; only LoRA adapters load.")
    bad = [k for k in ("use_dora", "use_rslora", "fan_in_fan_out") if conf.get(k)] + \
        [k for k in ("rank_pattern", "alpha_pattern") if conf.get(k)] + \
        ([f"bias={conf['bias']!r}"] if conf.get("bias", "none") != "none" else [])
    if bad:
        raise ConfigError(f"{d}: LoRA variants {bad} are not supported; export a plain LoRA adapter.")
    tensors = load_file(str(d / WEIGHTS_FILE))
    rules = _rules(model_cfg)
    # HF module name (regex, layer index captured) -> projection path
    pats = [(re.compile(re.escape(n).replace(re.escape("{i}"), r"(\d+)") + r"\.lora_([AB])(?:\.\w+)?\.weight"),
             path) for path, (n, op) in rules.items() if op.startswith("linear")]
    found: dict[str, dict] = {}
    for key, v in tensors.items():
        k = key[len(PREFIX):] if key.startswith(PREFIX) else key
        for pat, path in pats:
            m = pat.fullmatch(k)
            if m:
                i = int(m.group(1)) if m.lastindex == 2 else 0
                found.setdefault(path, {})[(m.group(m.lastindex), i)] = v
                break
        else:
            raise ConfigError(f"{d}: tensor {key} maps to no projection of a {type(model_cfg).family} model.")
    r = int(conf["r"])
    cfg = lora.LoRAConfig(targets=tuple(re.escape(p) for p in sorted(found)), rank=r,
                          alpha=float(conf.get("lora_alpha", r)), dropout=float(conf.get("lora_dropout", 0.0)))
    spec = P.flatten(lora.spec(model_cfg, cfg))
    out = {}
    for path, parts in found.items():
        sa, sb = spec[f"{path}/lora_a"].shape, spec[f"{path}/lora_b"].shape
        stacked = "{i}" in rules[path][0]
        n = sa[0] if stacked else 1
        a = [parts[("A", i)].T.reshape(sa[1:] if stacked else sa) for i in range(n)]  # [r, in] -> [*in, r]
        b = [parts[("B", i)].T.reshape(sb[1:] if stacked else sb) for i in range(n)]  # [out, r] -> [r, *out]
        out[f"{path}/lora_a"] = np.stack(a) if stacked else a[0]
        out[f"{path}/lora_b"] = np.stack(b) if stacked else b[0]
    return cfg, P.unflatten(out)
