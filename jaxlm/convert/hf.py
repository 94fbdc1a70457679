"""Hugging Face <-> jaxlm: config fields and parameter names for GPT-2, BERT and LLaMA (incl. Mistral).

:func:`load` reads a Hugging Face checkpoint directory (``config.json`` + ``*.safetensors``, or
``pytorch_model.bin`` when torch is installed), a sentence-transformers directory, or a hub id when online,
into a :class:`jaxlm.pretrained.Loaded`. :func:`save` writes a directory ``transformers`` loads
(``config.json`` + ``model.safetensors`` + tokenizer files).

Layouts. A torch ``nn.Linear`` stores ``[out, in]``; jaxlm stores ``[*in, *out]`` with heads split out
(``attn/q/w`` [D, H, K], ``attn/o/w`` [H, K, D]). GPT-2's ``Conv1D`` already stores ``[in, out]`` and fuses
q, k, v into one ``c_attn``. jaxlm stacks layers along a leading axis (``layers/...``).

Every name map below is a list of rules ``(jaxlm path, HF name, op)``: ``{i}`` in the HF name is the layer;
``op`` says how the array is re-laid: ``"copy"``, ``"vec"`` (a flat bias split into heads), ``"linear<n>"``
(torch Linear with n input dims on our side) or ``"conv<n>"`` (GPT-2 Conv1D).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm import params as P
from jaxlm.convert import hf_files
from jaxlm.convert import tokenizer as tok_lib
from jaxlm.convert.text import apply_chat_template, sentence_embeddings  # noqa: F401  (public here too)
from jaxlm.convert.tokenizer import gpt2_tokenizer  # noqa: F401  (public: jaxlm.convert.hf.gpt2_tokenizer)
from jaxlm.models import bert, gpt2, llama
from jaxlm.models.base import Loaded

log = logging.getLogger(__name__)

SUPPORTED = {"gpt2": "GPT-2", "bert": "BERT (incl. sentence-transformers)", "llama": "LLaMA", "mistral": "Mistral"}
_SUPPORTED_TEXT = "supported model_type values: " + ", ".join(f"{k!r} ({v})" for k, v in SUPPORTED.items())
_ACT_IN = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
           "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}
_ACT_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                    "merges.txt", "vocab.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
                    "generation_config.json")


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture (or an option of it) has no jaxlm equivalent."""


# ------------------------------------------------------------------------------------------------------------
# config.json <-> Config
def _unsupported(what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{what}. jaxlm imports {_SUPPORTED_TEXT}.")


def _act(hc: dict, key: str) -> str:
    a = hc.get(key, "gelu")
    if a not in _ACT_IN:
        raise _unsupported(f"activation {key}={a!r} is not supported (known: {sorted(_ACT_IN)})")
    return _ACT_IN[a]


def _pad(hc: dict, vocab: int) -> int:
    p = hc.get("pad_token_id")
    return p if isinstance(p, int) and 0 <= p < vocab else 0


def _rope_theta(hc: dict) -> float:
    rp = hc.get("rope_parameters") or {}
    scaling = hc.get("rope_scaling")
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type")) if scaling else rp.get("rope_type", "default")
    if kind not in (None, "default"):
        raise _unsupported(f"RoPE scaling {kind!r} (rope_scaling / rope_parameters) is not implemented in jaxlm; "
                           f"only plain RoPE (rope_type 'default') is")
    return float(hc.get("rope_theta", rp.get("rope_theta", 10000.0)))


def config_from_hf(hc: dict, names: set[str] | None = None):
    """A Hugging Face ``config.json`` dict -> (family module, Config). ``names`` (the checkpoint's tensor
    names) decide BERT's heads and pooler."""
    mt = hc.get("model_type")
    if mt == "gpt2":
        for k, ok in (("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False),
                      ("scale_attn_weights", True)):
            if hc.get(k, ok) != ok:
                raise _unsupported(f"GPT-2 option {k}={hc[k]} changes the architecture")
        d = hc["n_embd"]
        cfg = gpt2.Config(vocab_size=hc["vocab_size"], max_len=hc["n_positions"], d_model=d,
                          n_heads=hc["n_head"], n_layers=hc["n_layer"], d_ff=hc.get("n_inner") or 4 * d,
                          activation=_act(hc, "activation_function"), norm_eps=hc.get("layer_norm_epsilon", 1e-5),
                          dropout=hc.get("resid_pdrop", 0.1), attn_dropout=hc.get("attn_pdrop", 0.1),
                          tie_embeddings=hc.get("tie_word_embeddings", True), pad_id=_pad(hc, hc["vocab_size"]))
        return gpt2, cfg
    if mt in ("llama", "mistral"):
        if hc.get("hidden_act", "silu") not in ("silu", "swish"):
            raise _unsupported(f"{mt} with hidden_act={hc['hidden_act']!r} (jaxlm's LLaMA uses SwiGLU, 'silu')")
        if hc.get("attention_bias", False) != hc.get("mlp_bias", False):
            raise _unsupported(f"{mt} with attention_bias={hc.get('attention_bias')} but mlp_bias="
                               f"{hc.get('mlp_bias')}: jaxlm's use_bias covers both")
        sw = hc.get("sliding_window")
        if mt == "mistral" and sw is not None and sw < hc.get("max_position_embeddings", 0):
            raise _unsupported(f"Mistral sliding-window attention (sliding_window={sw} < max_position_embeddings="
                               f"{hc.get('max_position_embeddings')}) is not implemented; configs with "
                               f"sliding_window=null are")
        d, h = hc["hidden_size"], hc["num_attention_heads"]
        g = hc.get("num_key_value_heads") or h
        hd = hc.get("head_dim") or d // h
        cfg = llama.Config(vocab_size=hc["vocab_size"], max_len=hc.get("max_position_embeddings", 2048), d_model=d,
                           n_heads=h, n_kv_heads=None if g == h else g, n_layers=hc["num_hidden_layers"],
                           d_ff=hc["intermediate_size"], d_head=None if hd * h == d else hd,
                           norm_eps=hc.get("rms_norm_eps", 1e-6), rope_theta=_rope_theta(hc),
                           tie_embeddings=hc.get("tie_word_embeddings", False),
                           use_bias=hc.get("attention_bias", False), attn_dropout=hc.get("attention_dropout", 0.0),
                           pad_id=_pad(hc, hc["vocab_size"]))
        return llama, cfg
    if mt == "bert":
        if hc.get("position_embedding_type", "absolute") != "absolute":
            raise _unsupported(f"BERT position_embedding_type={hc['position_embedding_type']!r} (only 'absolute')")
        if hc.get("is_decoder") or hc.get("add_cross_attention"):
            raise _unsupported("BERT as a decoder (is_decoder / add_cross_attention)")
        names = names or set()
        heads = []
        if any(n.startswith("cls.predictions.") for n in names):
            heads.append("mlm")
        if "classifier.weight" in names:
            heads.append("classifier")
        if "qa_outputs.weight" in names:
            heads.append("span")
        n_labels = hc.get("num_labels") or len(hc.get("id2label") or {}) or 2
        cfg = bert.Config(vocab_size=hc["vocab_size"], max_len=hc["max_position_embeddings"], d_model=hc["hidden_size"],
                          n_heads=hc["num_attention_heads"], n_layers=hc["num_hidden_layers"],
                          d_ff=hc["intermediate_size"], activation=_act(hc, "hidden_act"),
                          norm_eps=hc.get("layer_norm_eps", 1e-12), dropout=hc.get("hidden_dropout_prob", 0.1),
                          attn_dropout=hc.get("attention_probs_dropout_prob", 0.1),
                          type_vocab_size=hc.get("type_vocab_size", 2), pad_id=_pad(hc, hc["vocab_size"]),
                          pooler=not names or "bert.pooler.dense.weight" in names, heads=tuple(heads),
                          num_labels=n_labels, classifier_dropout=hc.get("classifier_dropout"))
        return bert, cfg
    raise _unsupported(f"model_type {mt!r} (architectures {hc.get('architectures')}) is not supported")


def _require(ok: bool, cfg, what: str) -> None:
    if not ok:
        raise UnsupportedModelError(f"{type(cfg).__module__}.Config cannot be written as a Hugging Face "
                                    f"checkpoint: {what}.")


def config_to_hf(family, cfg, base: dict | None = None) -> dict:
    """(family, Config) -> a Hugging Face ``config.json`` dict (``base``: the original one, kept where it
    does not contradict ``cfg``, e.g. bos/eos ids)."""
    name = family.__name__.rsplit(".", 1)[-1]
    base = dict(base or {})
    if base.get("model_type") not in (None, name, "mistral" if name == "llama" else name):
        base = {}
    for k in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        base.pop(k, None)
    _require(cfg.norm_position == ("post" if name == "bert" else "pre"), cfg, f"norm_position={cfg.norm_position}")
    _require(not cfg.embed_scale, cfg, "embed_scale=True")
    _require(cfg.n_kv_heads in (None, cfg.n_heads) or name == "llama", cfg, "grouped-query attention")
    if name == "gpt2":
        _require(cfg.d_head in (None, cfg.d_model // cfg.n_heads), cfg, "d_head != d_model / n_heads")
        _require(cfg.pos_emb == "learned" and cfg.norm == "layernorm" and cfg.use_bias and cfg.final_norm, cfg,
                 "GPT-2 needs learned positions, LayerNorm with bias, biases and a final norm")
        _require(cfg.activation in _ACT_OUT, cfg, f"activation {cfg.activation!r}")
        out = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
               "n_positions": cfg.max_len, "n_embd": cfg.d_model, "n_head": cfg.n_heads, "n_layer": cfg.n_layers,
               "n_inner": cfg.d_ff, "activation_function": _ACT_OUT[cfg.activation],
               "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
               "attn_pdrop": cfg.attn_dropout, "tie_word_embeddings": cfg.tie_embeddings}
    elif name == "llama":
        _require(cfg.pos_emb == "rope" and cfg.norm == "rmsnorm" and cfg.activation == "swiglu" and cfg.final_norm,
                 cfg, "LLaMA needs RoPE, RMSNorm, SwiGLU and a final norm")
        base.pop("rope_scaling", None)
        out = {"model_type": base.get("model_type", "llama"),
               "architectures": base.get("architectures", ["LlamaForCausalLM"]), "vocab_size": cfg.vocab_size,
               "max_position_embeddings": cfg.max_len, "hidden_size": cfg.d_model,
               "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads,
               "num_hidden_layers": cfg.n_layers, "intermediate_size": cfg.d_ff, "head_dim": cfg.head_dim,
               "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
               "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
               "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": cfg.use_bias,
               "mlp_bias": cfg.use_bias, "attention_dropout": cfg.attn_dropout}
        if out["model_type"] == "mistral":
            out["sliding_window"] = None
    elif name == "bert":
        _require(cfg.pos_emb == "learned" and cfg.norm == "layernorm" and cfg.use_bias, cfg,
                 "BERT needs learned positions, LayerNorm and biases")
        _require(cfg.activation in _ACT_OUT, cfg, f"activation {cfg.activation!r}")
        arch = ("BertForMaskedLM" if "mlm" in cfg.heads else "BertForSequenceClassification"
                if "classifier" in cfg.heads else "BertForQuestionAnswering" if "span" in cfg.heads else "BertModel")
        _require(len(cfg.heads) <= 1, cfg, f"several heads {cfg.heads} (a transformers model class has one)")
        _require(cfg.pooler or arch in ("BertForMaskedLM", "BertForQuestionAnswering"), cfg,
                 f"{arch} has a pooler but pooler=False")
        out = {"model_type": "bert", "architectures": [arch], "vocab_size": cfg.vocab_size,
               "max_position_embeddings": cfg.max_len, "hidden_size": cfg.d_model,
               "num_attention_heads": cfg.n_heads, "num_hidden_layers": cfg.n_layers,
               "intermediate_size": cfg.d_ff, "hidden_act": _ACT_OUT[cfg.activation], "layer_norm_eps": cfg.norm_eps,
               "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attn_dropout,
               "type_vocab_size": cfg.type_vocab_size, "position_embedding_type": "absolute",
               "classifier_dropout": cfg.classifier_dropout}
        if "classifier" in cfg.heads:
            out["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
            out["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
            base.pop("id2label", None), base.pop("label2id", None), base.pop("num_labels", None)
    else:
        raise UnsupportedModelError(
            f"the {name!r} family has no Hugging Face counterpart jaxlm can write; export supports gpt2, bert, llama.")
    if base.get("pad_token_id") is None:
        out["pad_token_id"] = cfg.pad_id
    return {**base, **out}


# ------------------------------------------------------------------------------------------------------------
# parameter names
def _rules(name: str, cfg) -> tuple[str, list[tuple[str, str, str]]]:
    """(HF name prefix of the backbone, rules) for ``cfg``; see the module docstring for ``op``."""
    r: list[tuple[str, str, str]] = []
    if name == "gpt2":
        pre, L = "transformer.", "transformer.h.{i}."
        r += [("embed/tokens", "transformer.wte.weight", "copy"), ("embed/positions", "transformer.wpe.weight", "copy")]
        for a, b in (("norm1", "ln_1"), ("norm2", "ln_2")):
            r += [(f"layers/{a}/scale", L + b + ".weight", "copy"), (f"layers/{a}/bias", L + b + ".bias", "copy")]
        for x in "qkv":  # c_attn is split into virtual c_attn_{q,k,v} by _split_gpt2 before these rules run
            r += [(f"layers/attn/{x}/w", L + f"attn.c_attn_{x}.weight", "conv1"),
                  (f"layers/attn/{x}/b", L + f"attn.c_attn_{x}.bias", "vec")]
        r += [("layers/attn/o/w", L + "attn.c_proj.weight", "conv2"), ("layers/attn/o/b", L + "attn.c_proj.bias", "copy"),
              ("layers/mlp/wi/w", L + "mlp.c_fc.weight", "conv1"), ("layers/mlp/wi/b", L + "mlp.c_fc.bias", "copy"),
              ("layers/mlp/wo/w", L + "mlp.c_proj.weight", "conv1"), ("layers/mlp/wo/b", L + "mlp.c_proj.bias", "copy"),
              ("final_norm/scale", "transformer.ln_f.weight", "copy"), ("final_norm/bias", "transformer.ln_f.bias", "copy")]
        if not cfg.tie_embeddings:
            r.append(("lm_head/w", "lm_head.weight", "linear1"))
        return pre, r
    if name == "llama":
        pre, L = "model.", "model.layers.{i}."
        r += [("embed/tokens", "model.embed_tokens.weight", "copy"),
              ("layers/norm1/scale", L + "input_layernorm.weight", "copy"),
              ("layers/norm2/scale", L + "post_attention_layernorm.weight", "copy")]
        for x in "qkv":
            r.append((f"layers/attn/{x}/w", L + f"self_attn.{x}_proj.weight", "linear1"))
        r.append(("layers/attn/o/w", L + "self_attn.o_proj.weight", "linear2"))
        for ours, hf in (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj")):
            r.append((f"layers/mlp/{ours}/w", L + f"mlp.{hf}.weight", "linear1"))
        if cfg.use_bias:
            r += [(f"layers/attn/{x}/b", L + f"self_attn.{x}_proj.bias", "vec") for x in "qkv"]
            r.append(("layers/attn/o/b", L + "self_attn.o_proj.bias", "copy"))
            r += [(f"layers/mlp/{o}/b", L + f"mlp.{h}.bias", "copy")
                  for o, h in (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj"))]
        r.append(("final_norm/scale", "model.norm.weight", "copy"))
        if not cfg.tie_embeddings:
            r.append(("lm_head/w", "lm_head.weight", "linear1"))
        return pre, r
    # BERT
    pre, E, L = "bert.", "bert.embeddings.", "bert.encoder.layer.{i}."
    r += [("embed/tokens", E + "word_embeddings.weight", "copy"), ("embed/positions", E + "position_embeddings.weight", "copy"),
          ("embed/token_types", E + "token_type_embeddings.weight", "copy"),
          ("embed_norm/scale", E + "LayerNorm.weight", "copy"), ("embed_norm/bias", E + "LayerNorm.bias", "copy")]
    for x, hf in (("q", "query"), ("k", "key"), ("v", "value")):
        r += [(f"layers/attn/{x}/w", L + f"attention.self.{hf}.weight", "linear1"),
              (f"layers/attn/{x}/b", L + f"attention.self.{hf}.bias", "vec")]
    r += [("layers/attn/o/w", L + "attention.output.dense.weight", "linear2"),
          ("layers/attn/o/b", L + "attention.output.dense.bias", "copy"),
          ("layers/norm1/scale", L + "attention.output.LayerNorm.weight", "copy"),
          ("layers/norm1/bias", L + "attention.output.LayerNorm.bias", "copy"),
          ("layers/mlp/wi/w", L + "intermediate.dense.weight", "linear1"), ("layers/mlp/wi/b", L + "intermediate.dense.bias", "copy"),
          ("layers/mlp/wo/w", L + "output.dense.weight", "linear1"), ("layers/mlp/wo/b", L + "output.dense.bias", "copy"),
          ("layers/norm2/scale", L + "output.LayerNorm.weight", "copy"), ("layers/norm2/bias", L + "output.LayerNorm.bias", "copy")]
    if cfg.pooler:
        r += [("pooler/w", "bert.pooler.dense.weight", "linear1"), ("pooler/b", "bert.pooler.dense.bias", "copy")]
    if "mlm" in cfg.heads:
        C = "cls.predictions."
        r += [("mlm/transform/w", C + "transform.dense.weight", "linear1"), ("mlm/transform/b", C + "transform.dense.bias", "copy"),
              ("mlm/norm/scale", C + "transform.LayerNorm.weight", "copy"), ("mlm/norm/bias", C + "transform.LayerNorm.bias", "copy"),
              ("mlm/bias", C + "bias", "copy")]
    if "classifier" in cfg.heads:
        r += [("classifier/w", "classifier.weight", "linear1"), ("classifier/b", "classifier.bias", "copy")]
    if "span" in cfg.heads:
        r += [("span/w", "qa_outputs.weight", "linear1"), ("span/b", "qa_outputs.bias", "copy")]
    return pre, r


_HEAD_PREFIXES = ("lm_head.", "cls.", "classifier.", "qa_outputs.")
# tensors that carry no parameters (buffers) or duplicate tied ones
_IGNORED = ("attn.bias", "attn.masked_bias", "position_ids", "rotary_emb.inv_freq", "cls.predictions.decoder.",
            "cls.seq_relationship.", "lm_head.weight")


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
    shape = a.shape
    out = _hf_shape(op, shape)
    if op.startswith("linear"):
        return np.ascontiguousarray(a.reshape(out[1], out[0]).T)
    return np.ascontiguousarray(a.reshape(out))


def _normalise_names(name: str, tensors: dict[str, Any]) -> dict[str, Any]:
    """Prefix bare backbone names (``BertModel`` / ``LlamaModel`` / ``GPT2Model`` / sentence-transformers
    saves) with the task model's prefix, rename TF-era ``gamma``/``beta``, split GPT-2's fused c_attn."""
    pre = {"gpt2": "transformer.", "llama": "model.", "bert": "bert."}[name]
    out = {}
    for k, v in tensors.items():
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if k == "cls.predictions.decoder.bias":  # the MLM output bias, saved under either name
            k = "cls.predictions.bias"
        if not k.startswith(pre) and not k.startswith(_HEAD_PREFIXES):
            k = pre + k
        out[k] = v
    if name == "gpt2":
        for k in [k for k in out if k.endswith("attn.c_attn.weight") or k.endswith("attn.c_attn.bias")]:
            v = out.pop(k)
            parts = [None] * 3 if v is None else np.split(np.asarray(v), 3, axis=-1)
            for x, part in zip("qkv", parts):
                out[k.replace("c_attn", f"c_attn_{x}")] = part
    return out


def params_from_hf(family, cfg, tensors: dict[str, Any], source: str = "checkpoint") -> dict:
    """HF tensor dict -> jaxlm params tree (numpy arrays) for ``cfg``; clear errors for missing tensors and
    shape mismatches; unknown extra tensors are logged."""
    name = family.__name__.rsplit(".", 1)[-1]
    tensors = _normalise_names(name, tensors)
    _, rules = _rules(name, cfg)
    spec = P.flatten(family.spec(cfg))
    flat, missing, wrong, used = {}, [], [], set()
    for ours, hf, op in rules:
        shape = spec[ours].shape
        layered = "{i}" in hf
        names = [hf.format(i=i) for i in range(cfg.n_layers)] if layered else [hf]
        inner = shape[1:] if layered else shape
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
            flat[ours] = np.stack(arrs) if layered else arrs[0]
    if missing or wrong:
        msg = []
        if missing:
            msg.append(f"missing tensors {missing[:6]}{' ...' if len(missing) > 6 else ''} ({len(missing)} in all)")
        if wrong:
            msg.append("shape mismatch: " + "; ".join(wrong[:6]))
        raise ValueError(f"{source} does not match its config.json ({type(cfg).__module__}.Config): "
                         + ", ".join(msg) + ". Check that config.json and the weight files belong together.")
    unused = sorted(k for k in set(tensors) - used if not any(s in k for s in _IGNORED))
    if unused:
        log.warning("%s: %d tensors not used by jaxlm: %s", source, len(unused), unused[:8])
    out = P.unflatten(flat)
    P.check_params(out, family.spec(cfg), what=f"weights of {source}")
    return out


def params_to_hf(family, cfg, params: dict) -> dict[str, np.ndarray]:
    """jaxlm params tree -> HF tensor dict (names of the task model class, torch layouts; tied weights omitted)."""
    name = family.__name__.rsplit(".", 1)[-1]
    P.check_params(params, family.spec(cfg))
    flat = {k: np.asarray(v) for k, v in P.flatten(params).items()}
    _, rules = _rules(name, cfg)
    out: dict[str, np.ndarray] = {}
    for ours, hf, op in rules:
        a = flat[ours]
        if "{i}" in hf:
            for i in range(cfg.n_layers):
                out[hf.format(i=i)] = _to_hf(a[i], op)
        else:
            out[hf] = _to_hf(a, op)
    if name == "gpt2":
        for k in [k for k in out if "c_attn_q." in k]:
            qkv = [out.pop(k.replace("c_attn_q", f"c_attn_{x}")) for x in "qkv"]
            out[k.replace("c_attn_q", "c_attn")] = np.concatenate(qkv, axis=-1)
    if name == "bert":
        arch = config_to_hf(family, cfg)["architectures"][0]
        if arch == "BertModel":  # a bare encoder: transformers expects names without the "bert." prefix
            out = {k.removeprefix("bert."): v for k, v in out.items()}
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
    from jaxlm.convert import native

    if native.is_native(hc):  # a jaxlm params directory (jaxlm convert --to DIR)
        return native.load(d, dtype=dtype, tokenizer=tokenizer)
    config_from_hf(hc)  # an unsupported architecture fails here, before any weights are read
    tensors = hf_files.read_weights(d)
    name = hc.get("model_type")
    names = set(_normalise_names(name, {k: None for k in tensors}) if name in ("gpt2", "bert", "llama") else ())
    family, cfg = config_from_hf(hc, names)
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
