"""Hugging Face <-> jaxlm for every family that declares a Hugging Face mapping (``HF`` in its module, see
:mod:`jaxlm.models.hfmap`): a generic engine for config fields and parameter names.

:func:`load` reads a Hugging Face checkpoint directory (``config.json`` + ``*.safetensors``, or
``pytorch_model.bin`` when torch is installed), a sentence-transformers directory, or a hub id when online,
into a :class:`jaxlm.models.base.Loaded`. :func:`save` writes a directory ``transformers`` loads
(``config.json`` + ``model.safetensors`` + tokenizer files).

The family of a ``config.json`` is the one whose mapping lists its ``model_type``; functions that look it up
take ``families`` (default :data:`jaxlm.models.FAMILIES`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from jaxlm import params as P
from jaxlm.convert import hf_files, native
from jaxlm.convert import tokenizer as tok_lib
from jaxlm.convert.text import apply_chat_template, sentence_embeddings  # noqa: F401  (public here too)
from jaxlm.convert.tokenizer import gpt2_tokenizer  # noqa: F401  (public: jaxlm.convert.hf.gpt2_tokenizer)
from jaxlm.models import FAMILIES
from jaxlm.models.base import Loaded
from jaxlm.models.hfmap import MISSING, HFMapping, Rule, UnsupportedModelError

log = logging.getLogger(__name__)

__all__ = ["UnsupportedModelError", "apply_chat_template", "config_from_hf", "config_to_hf", "family_for",
           "gpt2_tokenizer", "load", "normalise_names", "params_from_hf", "params_to_hf", "save",
           "sentence_embeddings", "supported"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                    "merges.txt", "vocab.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
                    "generation_config.json")
# keys of an original config.json that describe the saving library, not the model
_STALE = ("_name_or_path", "transformers_version", "torch_dtype", "dtype")


# ------------------------------------------------------------------------------------------------------------
# config.json <-> Config
def supported(families: Mapping[str, ModuleType] | None = None) -> dict[str, str]:
    """``{model_type: display name}`` of every model_type the families import."""
    families = FAMILIES if families is None else families
    return {mt: name for fam in families.values() if fam.HF is not None for mt, name in fam.HF.model_types.items()}


def _unsupported(what: str, families: Mapping[str, ModuleType] | None) -> UnsupportedModelError:
    text = ", ".join(f"{k!r} ({v})" for k, v in supported(families).items())
    return UnsupportedModelError(f"{what}. jaxlm imports supported model_type values: {text}.")


def _mapping(family: ModuleType) -> HFMapping:
    if family.HF is None:
        can = ", ".join(name for name, fam in FAMILIES.items() if fam.HF is not None)
        raise UnsupportedModelError(f"the {family.Config.family!r} family has no Hugging Face counterpart jaxlm can "
                                    f"write ({family.__name__}.HF is None); export supports {can}.")
    return family.HF


def family_for(hc: dict, families: Mapping[str, ModuleType] | None = None) -> ModuleType:
    """The family module whose Hugging Face mapping imports ``hc["model_type"]``."""
    mt = hc.get("model_type")
    for fam in (FAMILIES if families is None else families).values():
        if fam.HF is not None and mt in fam.HF.model_types:
            return fam
    raise _unsupported(f"model_type {mt!r} (architectures {hc.get('architectures')}) is not supported", families)


def _pad(hc: dict, vocab: int) -> int:
    p = hc.get("pad_token_id")
    return p if isinstance(p, int) and 0 <= p < vocab else 0


def config_from_hf(hc: dict, names: set[str] | None = None,
                   families: Mapping[str, ModuleType] | None = None) -> tuple[ModuleType, Any]:
    """A Hugging Face ``config.json`` dict -> (family module, Config). ``names`` (the checkpoint's tensor
    names, normalised) let the family read what config.json does not say (BERT's heads and pooler)."""
    family = family_for(hc, families)
    m = family.HF
    for check in m.checks:
        problem = check(hc)
        if problem:
            raise _unsupported(problem, families)
    kw = dict(m.fixed)
    for f in m.fields:
        if f.ours is None:
            continue
        if f.default is MISSING and f.hf not in hc:
            raise ValueError(f"config.json of model_type {hc.get('model_type')!r} has no {f.hf!r}, which jaxlm needs "
                             f"for {family.Config.family}.Config.{f.ours}.")
        v = hc.get(f.hf, f.default)
        if f.values is not None:
            if v not in f.values:
                raise _unsupported(f"{f.hf}={v!r} is not supported (known: {sorted(f.values)})", families)
            v = f.values[v]
        kw[f.ours] = f.read(v, hc) if f.read is not None else v
    if m.read_config is not None:
        kw.update(m.read_config(hc, set(names or ())))
    kw["pad_id"] = _pad(hc, kw["vocab_size"])
    return family, family.Config(**kw)


def config_to_hf(family: ModuleType, cfg: Any, base: dict | None = None) -> dict:
    """(family, Config) -> a Hugging Face ``config.json`` dict (``base``: the original one, kept where it
    does not contradict ``cfg``, e.g. bos/eos ids)."""
    m = _mapping(family)
    base = dict(base or {})
    if base.get("model_type") not in (None, *m.model_types):
        base = {}
    for k in (*_STALE, *m.drop):
        base.pop(k, None)
    first = next(iter(m.model_types))
    problems = [f"{k}={getattr(cfg, k)!r} (Hugging Face {first!r} models have {v!r})"
                for k, v in m.fixed.items() if getattr(cfg, k) != v]
    problems += [p for check in m.export_checks if (p := check(cfg))]
    out: dict[str, Any] = {}
    for f in m.fields:
        if not f.export:
            continue
        v = f.write(cfg) if f.write is not None else getattr(cfg, f.ours)
        if f.values is not None:
            back: dict[Any, Any] = {}
            for hf_value, ours in f.values.items():
                back.setdefault(ours, hf_value)
            if v not in back:
                problems.append(f"{f.ours or f.hf}={v!r} has no Hugging Face {f.hf} value (these do: {sorted(back)})")
                continue
            v = back[v]
        out[f.hf] = v
    if problems:
        raise UnsupportedModelError(f"{type(cfg).__module__}.Config cannot be written as a Hugging Face "
                                    f"checkpoint: {'; '.join(problems)}.")
    mt = base.get("model_type") or first
    out = {"model_type": mt, "architectures": [m.architectures[mt]], **m.constants, **out}
    if base.get("pad_token_id") is None:
        out["pad_token_id"] = cfg.pad_id
    hc = {**base, **out}
    return m.write_config(cfg, hc) if m.write_config is not None else hc


# ------------------------------------------------------------------------------------------------------------
# parameter names
def _rules(family: ModuleType, cfg: Any) -> tuple[list[Rule], dict]:
    """The mapping's rules for the parameters ``cfg`` has, and the flat spec; every parameter needs a rule."""
    spec = P.flatten(family.spec(cfg))
    rules = [r for r in _mapping(family).rules if r[0] in spec]
    unnamed = sorted(set(spec) - {r[0] for r in rules})
    if unnamed:
        raise UnsupportedModelError(f"{type(cfg).__module__}.Config has parameters with no Hugging Face name in "
                                    f"{family.__name__}.HF.rules: {unnamed[:8]}.")
    return rules, spec


def _indexed_names(hf: str, shape: tuple[int, ...]) -> tuple[list[str], tuple[int, ...]]:
    """The checkpoint names of one jaxlm parameter of ``shape`` and the leading dims they index: ``{i}`` in
    ``hf`` runs over the leading layers axis, ``{e}`` over the (next) experts axis, in row-major order."""
    keys = [k for k in ("i", "e") if "{" + k + "}" in hf]
    lead = tuple(shape[:len(keys)])
    if not keys:
        return [hf], ()
    return [hf.format(**dict(zip(keys, ix))) for ix in itertools.product(*(range(n) for n in lead))], lead


def _hf_shape(op: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if op == "copy":
        return shape
    if op == "vec":
        return (math.prod(shape),)
    n = int(op[-1])
    i, o = math.prod(shape[:n]), math.prod(shape[n:])
    return (o, i) if op.startswith("linear") else (i, o)


def _to_ours(a: np.ndarray, op: str, shape: tuple[int, ...]) -> np.ndarray:
    if op.startswith("linear"):
        a = a.T
    return np.ascontiguousarray(a.reshape(shape))


def _to_hf(a: np.ndarray, op: str) -> np.ndarray:
    out = _hf_shape(op, a.shape)
    if op.startswith("linear"):
        return np.ascontiguousarray(a.reshape(out[1], out[0]).T)
    return np.ascontiguousarray(a.reshape(out))


def normalise_names(m: HFMapping, tensors: dict[str, Any], cfg: Any = None) -> dict[str, Any]:
    """Checkpoint tensors renamed to the names of ``m.rules``: ``m.renames`` applied, the backbone prefix
    added to bare backbone names, fused tensors split (a tensor may be None when only names matter; a fused
    tensor with unequal ``sizes`` needs the Config ``cfg`` to be split)."""
    heads = m.head_prefixes()
    out = {}
    for k, v in tensors.items():
        for old, new in m.renames.items():
            k = k.replace(old, new)
        if not k.startswith(m.prefix) and not k.startswith(heads):
            k = m.prefix + k
        out[k] = v
    for fu in m.fused:
        for k in [k for k in out if fu.hf in k]:
            v = out.pop(k)
            if v is None:
                parts = [None] * len(fu.parts)
            elif fu.sizes is not None and cfg is not None:
                parts = np.split(np.asarray(v), np.cumsum(fu.sizes(cfg))[:-1], axis=fu.axis)
            else:
                parts = np.split(np.asarray(v), len(fu.parts), axis=fu.axis)
            for name, part in zip(fu.parts, parts):
                out[k.replace(fu.hf, name)] = part
    return out


def params_from_hf(family: ModuleType, cfg: Any, tensors: dict[str, Any], source: str = "checkpoint") -> dict:
    """HF tensor dict -> jaxlm params tree (numpy arrays) for ``cfg``; clear errors for missing tensors and
    shape mismatches; unknown extra tensors are logged."""
    m = _mapping(family)
    tensors = normalise_names(m, tensors, cfg)
    rules, spec = _rules(family, cfg)
    flat, missing, wrong, used = {}, [], [], set()
    for ours, hf, op in rules:
        shape = spec[ours].shape
        names, lead = _indexed_names(hf, shape)
        inner = shape[len(lead):]
        arrs = []
        for n in names:
            if n not in tensors:
                missing.append(n)
                continue
            a = np.asarray(tensors[n])
            used.add(n)
            if a.shape != _hf_shape(op, inner):
                wrong.append(f"{n}: {a.shape} in the weights, {_hf_shape(op, inner)} from config.json")
                continue
            arrs.append(_to_ours(a, op, inner))
        if len(arrs) == len(names):
            flat[ours] = np.stack(arrs).reshape(shape) if lead else arrs[0]
    if missing or wrong:
        msg = []
        if missing:
            msg.append(f"missing tensors {missing[:6]}{' ...' if len(missing) > 6 else ''} ({len(missing)} in all)")
        if wrong:
            msg.append("shape mismatch: " + "; ".join(wrong[:6]))
        raise ValueError(f"{source} does not match its config.json ({type(cfg).__module__}.Config): "
                         + ", ".join(msg) + ". Check that config.json and the weight files belong together.")
    unused = sorted(k for k in set(tensors) - used if not any(s in k for s in m.ignored))
    if unused:
        log.warning("%s: %d tensors not used by jaxlm: %s", source, len(unused), unused[:8])
    out = P.unflatten(flat)
    P.check_params(out, family.spec(cfg), what=f"weights of {source}")
    return out


def params_to_hf(family: ModuleType, cfg: Any, params: dict) -> dict[str, np.ndarray]:
    """jaxlm params tree -> HF tensor dict (names of the exported class, torch layouts; tied weights omitted)."""
    m = _mapping(family)
    P.check_params(params, family.spec(cfg))
    flat = {k: np.asarray(v) for k, v in P.flatten(params).items()}
    rules, _ = _rules(family, cfg)
    out: dict[str, np.ndarray] = {}
    for ours, hf, op in rules:
        a = flat[ours]
        names, lead = _indexed_names(hf, a.shape)
        for n, part in zip(names, a.reshape(-1, *a.shape[len(lead):]) if lead else [a]):
            out[n] = _to_hf(part, op)
    for fu in m.fused:
        for k in [k for k in out if fu.parts[0] in k]:
            parts = [out.pop(k.replace(fu.parts[0], name)) for name in fu.parts]
            out[k.replace(fu.parts[0], fu.hf)] = np.concatenate(parts, axis=fu.axis)
    if m.bare and config_to_hf(family, cfg)["architectures"][0] in m.bare:
        out = {k.removeprefix(m.prefix): v for k, v in out.items()}  # a bare backbone class: no prefix
    return out


def load(path_or_id: str | Path, dtype: str = "float32", tokenizer: bool = True) -> Loaded:
    """A Hugging Face checkpoint (directory, sentence-transformers directory or hub id) -> :class:`Loaded`.

    ``params`` holds jax arrays in ``dtype`` (the Config's ``dtype`` and ``param_dtype`` are set to it);
    ``tokenizer`` is a ``tokenizers.Tokenizer`` from the same directory (None if it has none); ``extra`` has
    ``hf_config`` (the original config.json), ``bos_id``/``eos_id``/``stop_ids``, ``chat_template`` and, for
    sentence-transformers directories, ``sentence_transformers`` (pooling, normalize, max_seq_length).
    """
    import jax.numpy as jnp

    root = hf_files.resolve(path_or_id)
    if root.is_file():
        raise ValueError(f"{root} is a file; give the checkpoint directory (with config.json) or a .gguf file.")
    d, st_info = hf_files.sentence_transformers_info(root)
    cfg_f = d / "config.json"
    if not cfg_f.is_file():
        raise FileNotFoundError(f"{d} has no config.json: a Hugging Face checkpoint directory needs config.json "
                                f"next to its weights (model.safetensors).")
    hc = json.loads(cfg_f.read_text())
    if native.is_native(hc):  # a jaxlm params directory (jaxlm convert --to DIR)
        return native.load(d, dtype=dtype, tokenizer=tokenizer)
    family, _ = config_from_hf(hc)  # an unsupported architecture fails here, before any weights are read
    tensors = hf_files.read_weights(d)
    family, cfg = config_from_hf(hc, set(normalise_names(family.HF, dict.fromkeys(tensors))))
    params = params_from_hf(family, cfg, tensors, source=str(d))
    dtype = dtype or "float32"
    cfg = cfg.replace(dtype=dtype, param_dtype=dtype)
    params = P.unflatten({k: jnp.asarray(v, dtype) for k, v in P.flatten(params).items()})
    tok = None
    if tokenizer:
        tok = tok_lib.from_hf_dir(d) or (tok_lib.from_hf_dir(root) if root != d else None)
        if tok is not None:
            tok_lib.check_vocab(tok, cfg.vocab_size, str(d))
    extra = {"hf_config": hc, "chat_template": hf_files.chat_template(d) or hf_files.chat_template(root),
             "source_dir": str(d), **hf_files.special_ids(d, hc)}
    if st_info is not None:
        if st_info["max_seq_length"] is None:
            st_info["max_seq_length"] = cfg.max_len
        extra["sentence_transformers"] = st_info
    return Loaded(family=family, config=cfg, params=params, tokenizer=tok, source=str(path_or_id), extra=extra)


# ------------------------------------------------------------------------------------------------------------
# writing checkpoints
def save(model: Loaded | tuple, out_dir: str | Path, tokenizer: Any | None = None) -> Path:
    """Write ``model`` (a :class:`Loaded` or ``(family, cfg, params)``) as a Hugging Face checkpoint:
    ``config.json`` + ``model.safetensors`` (float32 unless params are stored otherwise) + tokenizer files
    (copied from the source directory when it had them, else ``tokenizer.json`` written from ``tokenizer``).
    ``transformers.AutoModel*.from_pretrained(out_dir)`` loads the result."""
    from safetensors.numpy import save_file

    if isinstance(model, Loaded):
        family, cfg, params, extra = model.family, model.config, model.params, dict(model.extra or {})
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    else:
        family, cfg, params = model
        extra = {}
    out = Path(out_dir)
    hc = config_to_hf(family, cfg, extra.get("hf_config"))
    for k in ("bos_id", "eos_id"):
        if extra.get(k) is not None:
            hc[k.replace("_id", "_token_id")] = extra[k]
    tensors = params_to_hf(family, cfg, params)
    tensors = {k: v.astype(np.float32) if v.dtype.name == "bfloat16" else v for k, v in tensors.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hc, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    src = Path(extra["source_dir"]) if extra.get("source_dir") else None
    copied = []
    if src is not None and src.resolve() != out.resolve():
        for f in _TOKENIZER_FILES:
            if (src / f).is_file():
                shutil.copyfile(src / f, out / f)
                copied.append(f)
    if "tokenizer.json" not in copied and tokenizer is not None:
        tokenizer.save(str(out / "tokenizer.json"))
        tc = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_len}
        for key, k in (("bos_token", "bos_id"), ("eos_token", "eos_id")):
            if extra.get(k) is not None:
                tc[key] = tokenizer.id_to_token(extra[k])
        if extra.get("chat_template"):
            tc["chat_template"] = extra["chat_template"]
        if not (out / "tokenizer_config.json").is_file():
            (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")
    return out
