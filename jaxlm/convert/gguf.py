"""GGUF (llama.cpp) -> jaxlm for the LLaMA family, dequantised to float32 with the ``gguf`` package.

A GGUF file holds the whole checkpoint: hyper-parameters as ``llama.*`` metadata, the tokenizer
(``tokenizer.ggml.*``: tokens, merges, special ids) and the chat template, and the tensors, quantised or not.

Two layout notes:
- GGUF lists a tensor's dims innermost-first; ``gguf``'s reader returns numpy arrays in the usual
  ``[rows, cols]`` order, i.e. torch's ``[out, in]`` — so the Hugging Face name map applies unchanged.
- llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k`` so that RoPE rotates interleaved
  pairs (GPT-J style) instead of halves; :func:`unpermute` undoes it to get the Hugging Face
  (rotate-half) layout jaxlm uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxlm.convert import hf
from jaxlm.convert import tokenizer as tok_lib
from jaxlm.models.base import Loaded

ARCHITECTURES = ("llama", "mistral")
_TENSORS = {  # GGUF name -> Hugging Face name ({i} = layer)
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


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


def hf_config(reader) -> dict:
    """The Hugging Face ``config.json`` equivalent of a llama-family GGUF's metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise hf.UnsupportedModelError(
            f"GGUF architecture {arch!r} is not supported; jaxlm imports GGUF files of {list(ARCHITECTURES)} "
            f"(for other models convert the Hugging Face checkpoint instead).")

    def g(k, default=None):
        return _field(reader, f"{arch}.{k}", default)

    n_tokens = len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else None
    d, h = int(g("embedding_length")), int(g("attention.head_count"))
    head_dim = int(g("attention.key_length", g("rope.dimension_count", d // h)))
    if g("rope.dimension_count", head_dim) != head_dim:
        raise hf.UnsupportedModelError(f"GGUF with partial rotary (rope.dimension_count="
                                       f"{g('rope.dimension_count')} < head_dim={head_dim}) is not supported.")
    if g("rope.scaling.type") not in (None, "none"):
        raise hf.UnsupportedModelError(f"GGUF RoPE scaling {g('rope.scaling.type')!r} is not implemented in jaxlm.")
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": int(g("vocab_size", n_tokens)), "max_position_embeddings": int(g("context_length", 2048)),
        "hidden_size": d, "num_attention_heads": h, "num_key_value_heads": int(g("attention.head_count_kv", h)),
        "num_hidden_layers": int(g("block_count")), "intermediate_size": int(g("feed_forward_length")),
        "head_dim": head_dim, "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(g("rope.freq_base", 10000.0)), "hidden_act": "silu",
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }


def read_tokenizer(reader):
    """A ``tokenizers.Tokenizer`` from the GGUF metadata (byte-level BPE: ``tokenizer.ggml.model == "gpt2"``);
    control tokens (type 3, e.g. ``<|im_start|>``) become special tokens."""
    model = _field(reader, "tokenizer.ggml.model")
    if model is None:
        return None
    if model != "gpt2":
        raise hf.UnsupportedModelError(
            f"GGUF tokenizer model {model!r} is not supported; jaxlm reads byte-level BPE ('gpt2') tokenizers "
            f"from GGUF (pass the model's Hugging Face tokenizer.json instead).")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = _field(reader, "tokenizer.ggml.merges") or []
    types = _field(reader, "tokenizer.ggml.token_type") or []
    special = [i for i, t in enumerate(types) if t == 3]
    return tok_lib.byte_level_bpe(tokens, merges, special=special, pre=_field(reader, "tokenizer.ggml.pre"))


def load(path: str | Path, dtype: str = "float32", tokenizer: bool = True) -> Loaded:
    """A llama-family ``.gguf`` file -> :class:`Loaded` (params dequantised to float32, then cast to ``dtype``);
    ``extra`` has ``chat_template``, ``bos_id``, ``eos_id``, ``stop_ids``, ``hf_config`` and ``gguf`` metadata
    (architecture, file type, name)."""
    import jax.numpy as jnp
    from gguf import GGUFReader

    from jaxlm import params as P

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist (expected a .gguf file).")
    try:
        reader = GGUFReader(str(p))
    except Exception as e:
        raise ValueError(f"{p} is not a readable GGUF file ({type(e).__name__}: {e}).") from e
    hc = hf_config(reader)
    family, cfg = hf.config_from_hf(hc)
    H, G = cfg.n_heads, cfg.kv_heads
    tensors = {}
    for t in reader.tensors:
        name = t.name
        if name.startswith("blk."):
            i, rest = name[4:].split(".", 1)
            key = "blk.{i}." + rest
            target = _TENSORS.get(key)
            target = target.format(i=i) if target else None
        else:
            target = _TENSORS.get(name)
        if target is None:
            continue  # e.g. rope_freqs
        a = _dequantize(t)
        if name.endswith("attn_q.weight"):
            a = unpermute(a, H)
        elif name.endswith("attn_k.weight"):
            a = unpermute(a, G)
        tensors[target] = a
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
