"""GGUF (llama.cpp) -> jaxlm, dequantised to float32 with the ``gguf`` package, for every family whose Hugging
Face mapping has a ``gguf`` part (:class:`jaxlm.models.hfmap.GGUFMapping`) claiming the file's
``general.architecture``.

A GGUF file holds the whole checkpoint: hyper-parameters as ``<architecture>.*`` metadata, the tokenizer
(``tokenizer.ggml.*``: tokens, merges, special ids) and the chat template, and the tensors, quantised or not.
The family's mapping turns the metadata into a Hugging Face ``config.json`` and GGUF tensor names into
Hugging Face names; from there :mod:`jaxlm.convert.hf` takes over.

Two layout notes:
- GGUF lists a tensor's dims innermost-first; ``gguf``'s reader returns numpy arrays in the usual
  ``[rows, cols]`` order, i.e. torch's ``[out, in]`` — so the Hugging Face name map applies unchanged.
- llama.cpp's converter permutes the rows of RoPE'd projections (the mapping's ``permuted``: LLaMA's
  ``attn_q`` / ``attn_k``) so that RoPE rotates interleaved pairs (GPT-J style) instead of halves;
  :func:`unpermute` undoes it to get the Hugging Face (rotate-half) layout jaxlm uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import numpy as np

from jaxlm import params as P
from jaxlm.convert import hf
from jaxlm.convert import tokenizer as tok_lib
from jaxlm.models import FAMILIES
from jaxlm.models.base import Loaded
from jaxlm.models.hfmap import GGUF_BYTE_LEVEL_BPE, GGUFMetadata, UnsupportedModelError


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: ``[rows, cols]`` -> ``[H, rows/H/2, 2, cols]``, swap axes 1 and
    2, reshape back (rows = H * head_dim)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _dequantize(t) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
        a = np.asarray(t.data)
        if t.tensor_type == GGMLQuantizationType.BF16:
            a = dequantize(a, t.tensor_type)
    else:
        a = dequantize(t.data, t.tensor_type)
    shape = tuple(int(s) for s in reversed(t.shape.tolist()))  # GGUF dims are innermost-first
    return np.asarray(a, np.float32).reshape(shape)


def architectures(families: Mapping[str, ModuleType] | None = None) -> dict[str, ModuleType]:
    """``{general.architecture: family module}`` for every GGUF architecture the families import."""
    families = FAMILIES if families is None else families
    return {a: fam for fam in families.values() if fam.HF is not None and fam.HF.gguf is not None
            for a in fam.HF.gguf.architectures}


def _family(reader, families: Mapping[str, ModuleType] | None) -> ModuleType:
    arch, known = _field(reader, "general.architecture"), architectures(families)
    if arch not in known:
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} is not supported; jaxlm imports GGUF files of {list(known)} "
            f"(for other models convert the Hugging Face checkpoint instead).")
    return known[arch]


def hf_config(reader, families: Mapping[str, ModuleType] | None = None) -> dict:
    """The Hugging Face ``config.json`` equivalent of a GGUF file's metadata."""
    family = _family(reader, families)
    meta = GGUFMetadata(
        architecture=_field(reader, "general.architecture"), lookup=lambda key: _field(reader, key),
        tensor_names=frozenset(t.name for t in reader.tensors),
        n_tokens=len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else None)
    return {**family.HF.gguf.config(meta),
            "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
            "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
            "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id")}


def read_tokenizer(reader):
    """A ``tokenizers.Tokenizer`` from the GGUF metadata (byte-level BPE: ``tokenizer.ggml.model`` is
    :data:`~jaxlm.models.hfmap.GGUF_BYTE_LEVEL_BPE`);
    control tokens (type 3, e.g. ``<|im_start|>``) become special tokens."""
    model = _field(reader, "tokenizer.ggml.model")
    if model is None:
        return None
    if model != GGUF_BYTE_LEVEL_BPE:
        raise UnsupportedModelError(
            f"GGUF tokenizer model {model!r} is not supported; jaxlm reads byte-level BPE "
            f"({GGUF_BYTE_LEVEL_BPE!r}) tokenizers from GGUF (pass the model's Hugging Face tokenizer.json instead).")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = _field(reader, "tokenizer.ggml.merges") or []
    types = _field(reader, "tokenizer.ggml.token_type") or []
    special = [i for i, t in enumerate(types) if t == 3]
    return tok_lib.byte_level_bpe(tokens, merges, special=special, pre=_field(reader, "tokenizer.ggml.pre"))


def load(path: str | Path, dtype: str = "float32", tokenizer: bool = True,
         families: Mapping[str, ModuleType] | None = None) -> Loaded:
    """A ``.gguf`` file -> :class:`Loaded` (params dequantised to float32, then cast to ``dtype``); ``extra``
    has ``chat_template``, ``bos_id``, ``eos_id``, ``stop_ids``, ``hf_config`` and ``gguf`` metadata
    (architecture, file type, name)."""
    import jax.numpy as jnp
    from gguf import GGUFReader

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist (expected a .gguf file).")
    try:
        reader = GGUFReader(str(p))
    except Exception as e:
        raise ValueError(f"{p} is not a readable GGUF file ({type(e).__name__}: {e}).") from e
    g = _family(reader, families).HF.gguf
    hc = hf_config(reader, families)
    family, cfg = hf.config_from_hf(hc, families=families)
    tensors = {}
    for t in reader.tensors:
        key, i = t.name, None
        if key.startswith("blk."):  # per-layer tensors: "blk.<i>.<rest>", mapped by "blk.{i}.<rest>"
            i, rest = key[4:].split(".", 1)
            key = "blk.{i}." + rest
        target = g.tensors.get(key)
        if target is None:
            continue  # e.g. rope_freqs
        a = _dequantize(t)
        if key in g.permuted:
            a = unpermute(a, getattr(cfg, g.permuted[key]))
        tensors[target.format(i=i) if i is not None else target] = a
    params = hf.params_from_hf(family, cfg, tensors, source=str(p))
    dtype = dtype or "float32"
    cfg = cfg.replace(dtype=dtype, param_dtype=dtype)
    params = P.unflatten({k: jnp.asarray(v, dtype) for k, v in P.flatten(params).items()})
    tok = read_tokenizer(reader) if tokenizer else None
    if tok is not None:
        tok_lib.check_vocab(tok, cfg.vocab_size, str(p))
    eos = hc["eos_token_id"]
    extra = {"hf_config": hc, "chat_template": _field(reader, "tokenizer.chat_template"),
             "bos_id": hc["bos_token_id"], "eos_id": eos, "stop_ids": [] if eos is None else [int(eos)],
             "add_bos": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
             "gguf": {"architecture": _field(reader, "general.architecture"), "name": _field(reader, "general.name"),
                      "file_type": _field(reader, "general.file_type")}}
    return Loaded(family=family, config=cfg, params=params, tokenizer=tok, source=str(p), extra=extra)
