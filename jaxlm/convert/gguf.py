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
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

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


# ------------------------------------------------------------------------------------------------------------
# GGUF blocks kept quantized (jaxlm.nn.quant.QArray)
BLOCK = 32  # values per block in Q8_0 / Q4_0 / Q4_1
KEPT_QUANTIZED = ("Q8_0", "Q4_0", "Q4_1")  # the GGUF types load(..., quantized=True) keeps as integers
_FLOAT_TYPES = ("F32", "F16", "BF16")


@dataclass
class Blocks:
    """One GGUF tensor's blocks decoded into integers, torch layout ``[rows, cols]`` (cols = input):
    ``values`` int8 (Q8_0) or uint8 0..15 (Q4_0/Q4_1), ``scale`` / ``zero`` float16 ``[rows, cols / 32]``
    (``zero``: Q4_1's per-block minimum, else None); ``w = scale * v`` (Q8_0), ``scale * (v - 8)`` (Q4_0),
    ``scale * v + zero`` (Q4_1)."""

    type_name: str
    values: np.ndarray
    scale: np.ndarray
    zero: np.ndarray | None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    def rows(self, perm_heads: int | None) -> Blocks:
        """The same blocks with llama.cpp's q/k row permutation undone (see :func:`unpermute`)."""
        if perm_heads is None:
            return self
        f = lambda a: None if a is None else unpermute(a, perm_heads)  # noqa: E731
        return Blocks(self.type_name, f(self.values), f(self.scale), f(self.zero))


def decode_blocks(raw: np.ndarray, type_name: str, shape: tuple[int, int]) -> Blocks:
    """A Q8_0 / Q4_0 / Q4_1 tensor's raw bytes ``[rows, n_blocks * block_bytes]`` -> :class:`Blocks` (integers
    and float16 scales, no float32 copy of the weight). Q4 blocks hold element j in the low nibble of byte j
    and element j + 16 in its high nibble (llama.cpp's ``block_q4_0`` / ``block_q4_1``)."""
    rows, cols = shape
    if type_name not in KEPT_QUANTIZED:
        raise ValueError(f"GGUF quantization type {type_name} cannot be kept quantized; jaxlm keeps "
                         f"{', '.join(KEPT_QUANTIZED)} as integers (float types {', '.join(_FLOAT_TYPES)} load as "
                         f"floats): load without quantized=True to dequantise it to float32, or re-export the "
                         f"GGUF file as Q8_0, Q4_0 or Q4_1.")
    nb = cols // BLOCK
    b = np.ascontiguousarray(raw, np.uint8).reshape(rows, nb, -1)
    head = 4 if type_name == "Q4_1" else 2
    d = b[:, :, 0:2].copy().view(np.float16)[..., 0]  # [rows, nb]
    m = b[:, :, 2:4].copy().view(np.float16)[..., 0] if type_name == "Q4_1" else None
    qs = b[:, :, head:]
    if type_name == "Q8_0":
        v = qs.copy().view(np.int8)  # [rows, nb, 32]
    else:
        v = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # [rows, nb, 16 + 16]: j, then j + 16
    return Blocks(type_name, v.reshape(rows, cols), d, m)


def _blocks_to_qarray(blocks: list[Blocks], op: str, inner: tuple[int, ...], layered: bool) -> Any:
    """Per-layer :class:`Blocks` in torch layout -> one QArray in jaxlm layout (the mapping's ``op``:
    ``copy`` keeps ``[V, D]``, ``linear<n>`` transposes ``[out, in]`` to ``[*in, *out]`` with n input
    axes); groups of 32 run along the flattened input, as the blocks do."""
    import jax.numpy as jnp

    from jaxlm.convert import hf
    from jaxlm.nn import quant

    if op == "copy":
        n_in, out_shape = 1, inner[:-1]
        in_axes: tuple[int, ...] = (-1,)
        to_ours = lambda a, shape: np.ascontiguousarray(a.reshape(shape))  # noqa: E731
    elif op.startswith("linear"):
        n_in = int(op[-1])
        out_shape = inner[n_in:]
        in_axes = tuple(range(-len(inner), -len(inner) + n_in))
        to_ours = lambda a, shape: hf._to_ours(a, op, shape)  # noqa: E731
    else:
        raise ValueError(f"a GGUF {blocks[0].type_name} tensor maps to a jaxlm parameter with op {op!r}, which "
                         f"cannot be kept quantized.")
    bits = 8 if blocks[0].type_name == "Q8_0" else 4
    qs, scales, zeros = [], [], []
    if op == "copy":  # [V, D / 32] already
        sc = lambda a: np.ascontiguousarray(a)  # noqa: E731
    else:  # [out, in / 32] -> [in / 32, *out]
        sc = lambda a: np.ascontiguousarray(a.T.reshape((a.shape[1],) + tuple(out_shape)))  # noqa: E731
    for bl in blocks:
        v = to_ours(bl.values, inner)
        qs.append(v if bits == 8 else quant.pack_int4(v, len(inner) + in_axes[-1]))
        scales.append(sc(bl.scale))
        if bl.zero is not None:
            zeros.append(sc(bl.zero))
    stack = (lambda xs: np.stack(xs)) if layered else (lambda xs: xs[0])
    return quant.QArray(q=jnp.asarray(stack(qs)), scale=jnp.asarray(stack(scales)),
                        zero=jnp.asarray(stack(zeros)) if zeros else None, bits=bits, group=BLOCK, in_axes=in_axes)


def _is_q(v) -> bool:
    from jaxlm.nn import quant

    return isinstance(v, quant.QArray)


def _keep_quantized(family: ModuleType, cfg: Any, params: dict, kept: dict[str, Blocks]) -> dict:
    """Replace the stand-ins of ``params`` by QArrays built from the kept blocks (the mapping's rules say
    which Hugging Face tensors, one per layer for stacked parameters, make each jaxlm parameter)."""
    from jaxlm.convert import hf

    m = hf._mapping(family)
    kept = hf.normalise_names(m, kept) if not m.fused else kept
    rules, spec = hf._rules(family, cfg)
    flat = P.flatten(params)
    for ours, name, op in rules:
        layered = "{i}" in name
        names = [name.format(i=i) for i in range(cfg.n_layers)] if layered else [name]
        if not any(n in kept for n in names):
            continue
        if not all(n in kept for n in names) or len({kept[n].type_name for n in names}) != 1:
            raise ValueError(f"{ours}: its GGUF tensors mix quantization types "
                             f"{sorted({kept[n].type_name if n in kept else 'float' for n in names})}; load "
                             f"without quantized=True to dequantise them.")
        inner = spec[ours].shape[1:] if layered else spec[ours].shape
        flat[ours] = _blocks_to_qarray([kept[n] for n in names], op, inner, layered)
    return P.unflatten(flat)


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
         families: Mapping[str, ModuleType] | None = None, quantized: bool = False) -> Loaded:
    """A ``.gguf`` file -> :class:`Loaded` (params dequantised to float32, then cast to ``dtype``); ``extra``
    has ``chat_template``, ``bos_id``, ``eos_id``, ``stop_ids``, ``hf_config`` and ``gguf`` metadata
    (architecture, file type, name).

    ``quantized=True`` keeps the file's quantized matmul weights and token table quantized: Q8_0 / Q4_0 /
    Q4_1 blocks become :class:`jaxlm.nn.quant.QArray` (int8 or packed int4 values, the file's float16 block
    scales and Q4_1 minimums, groups of 32 along the input) without a float32 copy; float tensors (norms)
    load as floats; any other quantized type is an error naming it and the supported ones."""
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
    tensors, kept = {}, {}
    for t in reader.tensors:
        key, i = t.name, None
        if key.startswith("blk."):  # per-layer tensors: "blk.<i>.<rest>", mapped by "blk.{i}.<rest>"
            i, rest = key[4:].split(".", 1)
            key = "blk.{i}." + rest
        target = g.tensors.get(key)
        if target is None:
            continue  # e.g. rope_freqs
        name = target.format(i=i) if i is not None else target
        heads = getattr(cfg, g.permuted[key]) if key in g.permuted else None
        if quantized and t.tensor_type.name not in _FLOAT_TYPES:
            shape = tuple(int(s) for s in reversed(t.shape.tolist()))
            kept[name] = decode_blocks(t.data, t.tensor_type.name, shape).rows(heads)
            # a zero-stride stand-in, so the name and shape checks of params_from_hf run unchanged
            tensors[name] = np.broadcast_to(np.zeros((), np.bool_), shape)
            continue
        a = _dequantize(t)
        if heads is not None:
            a = unpermute(a, heads)
        tensors[name] = a
    params = hf.params_from_hf(family, cfg, tensors, source=str(p))
    if kept:
        params = _keep_quantized(family, cfg, params, kept)
    dtype = dtype or "float32"
    cfg = cfg.replace(dtype=dtype, param_dtype=dtype)
    params = P.unflatten({k: v if _is_q(v) else jnp.asarray(v, dtype) for k, v in P.flatten(params).items()})
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
