"""A LLaMA-style decoder (Touvron et al., 2023, "Llama 2: Open Foundation and Fine-Tuned Chat Models"), and
Llama 3.1 (Meta, 2024, "The Llama 3 Herd of Models"; model card meta-llama/Llama-3.1-8B): the same
architecture with a 128k vocabulary, rope_theta 500000 and "llama3" RoPE scaling (factor 8,
low/high_freq_factor 1/4, original context 8192; :func:`jaxlm.nn.positions.rope_frequencies`).

Pre-norm with RMSNorm, rotary position embeddings (rotate-half convention, as in Hugging Face's
``LlamaForCausalLM``), SwiGLU feed-forward, no biases, grouped-query attention (``n_kv_heads`` < ``n_heads``),
untied output head (tied for small models such as SmolLM2).

Deviations:
- ``norm_eps`` defaults to 1e-5 (Llama 2's released config) where the LLaMA paper's code used 1e-6.
- no dropout by default (the papers do not use it); ``dropout`` fields exist for fine-tuning.
- RoPE scaling: "linear" and Llama 3.1's "llama3" are implemented; dynamic NTK, YaRN and LongRoPE are not
  (importing such a checkpoint is an error naming rope_type and the supported values).
- Mistral (same layers plus a sliding window) is its own family, :mod:`jaxlm.models.mistral`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jaxlm.models import decoder, hfmap, hfparts
from jaxlm.models.base import ModelConfig, Preset


@dataclass(frozen=True, kw_only=True)
class Config(ModelConfig):
    family: ClassVar[str] = "llama"
    vocab_size: int = 32000
    max_len: int = 4096
    d_model: int = 4096
    n_heads: int = 32
    n_layers: int = 32
    d_ff: int = 11008
    dropout: float = 0.0
    attn_dropout: float = 0.0
    activation: str = "swiglu"
    norm: str = "rmsnorm"
    pos_emb: str = "rope"
    tie_embeddings: bool = False
    use_bias: bool = False


KIND = "decoder"
TASKS = ("causal_lm",)

PRESETS: dict[str, Preset] = {
    "llama2-7b": Preset(Config(), "Touvron et al. 2023, Llama 2", 6_738_415_616),
    "tinyllama-1.1b": Preset(
        Config(max_len=2048, d_model=2048, n_heads=32, n_kv_heads=4, n_layers=22, d_ff=5632),
        "Zhang et al. 2024, TinyLlama: An Open-Source Small Language Model", 1_100_048_384),
    "smollm2-135m": Preset(
        Config(vocab_size=49152, max_len=8192, d_model=576, n_heads=9, n_kv_heads=3, n_layers=30, d_ff=1536,
               rope_theta=100000.0, tie_embeddings=True),
        "Allal et al. 2025, SmolLM2 (HuggingFaceTB/SmolLM2-135M)", 134_515_008),
    "llama3.1-8b": Preset(
        Config(vocab_size=128256, max_len=131072, d_model=4096, n_heads=32, n_kv_heads=8, n_layers=32, d_ff=14336,
               rope_theta=500000.0, rope_type="llama3", rope_factor=8.0, rope_low_freq_factor=1.0,
               rope_high_freq_factor=4.0, rope_original_max_len=8192),
        "Meta 2024, The Llama 3 Herd of Models; model card meta-llama/Llama-3.1-8B", 8_030_261_248),
    "llama3.1-tiny": Preset(
        Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=172,
               rope_theta=500000.0, rope_type="llama3", rope_factor=8.0, rope_low_freq_factor=1.0,
               rope_high_freq_factor=4.0, rope_original_max_len=32),
        "test-sized Llama 3.1 (llama3 RoPE scaling with a 32-token original context, so it acts at test lengths)",
        156_480),
    "llama-tiny": Preset(
        Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=172),
        "test-sized LLaMA (grouped-query: 4 query heads over 2 key/value heads)", 156_480),
}

spec = decoder.spec
init = decoder.init
apply = decoder.apply
init_cache = decoder.init_cache


# ------------------------------------------------------------------------------------------------------------
# Hugging Face mapping
def _one_bias_switch(hc: dict) -> str | None:
    if hc.get("attention_bias", False) == hc.get("mlp_bias", False):
        return None
    return (f"{hc['model_type']} with attention_bias={hc.get('attention_bias')} but mlp_bias={hc.get('mlp_bias')}: "
            f"jaxlm's use_bias covers both")


def _gguf_config(meta: hfmap.GGUFMetadata) -> dict:
    """The config.json of a llama-family GGUF (llama.cpp's ``<arch>.*`` keys)."""
    d, h = int(meta.get("embedding_length")), int(meta.get("attention.head_count"))
    head_dim = int(meta.get("attention.key_length", meta.get("rope.dimension_count", d // h)))
    if meta.get("rope.dimension_count", head_dim) != head_dim:
        raise hfmap.UnsupportedModelError(f"GGUF with partial rotary (rope.dimension_count="
                                          f"{meta.get('rope.dimension_count')} < head_dim={head_dim}) is not supported.")
    if meta.get("rope.scaling.type") not in (None, "none"):
        raise hfmap.UnsupportedModelError(f"GGUF RoPE scaling {meta.get('rope.scaling.type')!r} is not implemented "
                                          f"in jaxlm.")
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": int(meta.get("vocab_size", meta.n_tokens)),
        "max_position_embeddings": int(meta.get("context_length", 2048)),
        "hidden_size": d, "num_attention_heads": h, "num_key_value_heads": int(meta.get("attention.head_count_kv", h)),
        "num_hidden_layers": int(meta.get("block_count")), "intermediate_size": int(meta.get("feed_forward_length")),
        "head_dim": head_dim, "rms_norm_eps": float(meta.get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(meta.get("rope.freq_base", 10000.0)), "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in meta.tensor_names,
    }


_L = "model.layers.{i}."
_PROJ = (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"))
_MLP = (("wi_0", "mlp.gate_proj"), ("wi_1", "mlp.up_proj"), ("wo", "mlp.down_proj"))
HF = hfmap.HFMapping(
    model_types={"llama": "LLaMA"},
    architectures={"llama": "LlamaForCausalLM"},
    fields=(
        hfmap.Field("vocab_size", "vocab_size"),
        hfmap.Field("max_position_embeddings", "max_len", 2048),
        hfmap.Field("hidden_size", "d_model"),
        hfmap.Field("num_attention_heads", "n_heads"),
        hfmap.Field("num_key_value_heads", "n_kv_heads", None, write=lambda cfg: cfg.kv_heads,
                    read=lambda g, hc: None if (g or hc["num_attention_heads"]) == hc["num_attention_heads"] else g),
        hfmap.Field("num_hidden_layers", "n_layers"),
        hfmap.Field("intermediate_size", "d_ff"),
        hfmap.Field("head_dim", "d_head", None, write=lambda cfg: cfg.head_dim,
                    read=lambda k, hc: None if not k or k * hc["num_attention_heads"] == hc["hidden_size"] else k),
        hfmap.Field("rms_norm_eps", "norm_eps", 1e-6),
        *hfparts.rope_fields(),
        hfmap.Field("tie_word_embeddings", "tie_embeddings", False),
        hfmap.Field("attention_bias", "use_bias", False),
        hfmap.Field("mlp_bias", write=lambda cfg: cfg.use_bias),
        hfmap.Field("attention_dropout", "attn_dropout", 0.0),
    ),
    fixed={"norm_position": "pre", "embed_scale": False, "pos_emb": "rope", "norm": "rmsnorm",
           "activation": "swiglu", "final_norm": True},
    constants={"hidden_act": "silu"},
    checks=(hfmap.only("hidden_act", ("silu", "swish"), "silu",
                       "{model_type} with hidden_act={value!r} (jaxlm's LLaMA uses SwiGLU, 'silu')"),
            _one_bias_switch, hfparts.check_rope),
    drop=("rope_scaling",),
    prefix="model.",
    rules=(
        ("embed/tokens", "model.embed_tokens.weight", "copy"),
        ("layers/norm1/scale", _L + "input_layernorm.weight", "copy"),
        ("layers/norm2/scale", _L + "post_attention_layernorm.weight", "copy"),
        *((f"layers/attn/{x}/w", _L + f"{hf}.weight", "linear1") for x, hf in _PROJ),
        ("layers/attn/o/w", _L + "self_attn.o_proj.weight", "linear2"),
        *((f"layers/mlp/{x}/w", _L + f"{hf}.weight", "linear1") for x, hf in _MLP),
        # with use_bias
        *((f"layers/attn/{x}/b", _L + f"{hf}.bias", "vec") for x, hf in _PROJ),
        ("layers/attn/o/b", _L + "self_attn.o_proj.bias", "copy"),
        *((f"layers/mlp/{x}/b", _L + f"{hf}.bias", "copy") for x, hf in _MLP),
        ("final_norm/scale", "model.norm.weight", "copy"),
        ("lm_head/w", "lm_head.weight", "linear1"),  # untied only
    ),
    ignored=("rotary_emb.inv_freq", "lm_head.weight"),  # a buffer; the tied head
    gguf=hfmap.GGUFMapping(
        architectures=("llama", "mistral"),
        tensors={
            "token_embd.weight": "model.embed_tokens.weight",
            "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight",
            "blk.{i}.attn_norm.weight": _L + "input_layernorm.weight",
            "blk.{i}.ffn_norm.weight": _L + "post_attention_layernorm.weight",
            "blk.{i}.attn_q.weight": _L + "self_attn.q_proj.weight",
            "blk.{i}.attn_k.weight": _L + "self_attn.k_proj.weight",
            "blk.{i}.attn_v.weight": _L + "self_attn.v_proj.weight",
            "blk.{i}.attn_output.weight": _L + "self_attn.o_proj.weight",
            "blk.{i}.ffn_gate.weight": _L + "mlp.gate_proj.weight",
            "blk.{i}.ffn_up.weight": _L + "mlp.up_proj.weight",
            "blk.{i}.ffn_down.weight": _L + "mlp.down_proj.weight",
        },
        config=_gguf_config,
        # llama.cpp's converter interleaves the rows of q and k so that RoPE rotates adjacent pairs
        permuted={"blk.{i}.attn_q.weight": "n_heads", "blk.{i}.attn_k.weight": "kv_heads"},
    ),
)
