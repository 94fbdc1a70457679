"""Gemma (Gemma Team, 2024, "Gemma: Open Models Based on Gemini Research and Technology").

A LLaMA-style decoder with Gemma's choices: RMSNorm whose scale is stored as an offset from one
(``x / rms(x) * (1 + w)``, norm kind ``"rmsnorm_1p"``), token embeddings multiplied by sqrt(d_model)
(``embed_scale``), GeGLU feed-forward with the tanh GELU (``"geglu_tanh"``), RoPE, no biases, head_dim 256
independent of d_model / n_heads, multi-query attention in the 2B model (one key/value head), and the output
head tied to the token table.

Parameter count (gemma-2b, 2,506,172,416): the tied table 256000 x 2048, plus 18 layers of q [2048, 8 x 256],
k and v [2048, 1 x 256], o [8 x 256, 2048], the three GeGLU matrices 2048 x 16384 and two norm scales, plus
the final norm scale.

Deviations:
- the vocabulary is the released checkpoint's 256,000 tokens (the paper's Table 1 prints 256,128).
- otherwise none in the architecture. ``dropout``/``attn_dropout`` default to 0 (the released models use none);
  ``attn_impl``, ``remat``, ``scan_layers`` and ``dtype`` change how, not what, is computed.
- the embedding scale sqrt(d_model) is rounded to the compute dtype before the product, as transformers does
  (in bfloat16, sqrt(2048) = 45.25); in float32 this is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jaxlm.models import decoder, hfmap
from jaxlm.models.base import ModelConfig, Preset


@dataclass(frozen=True, kw_only=True)
class Config(ModelConfig):
    family: ClassVar[str] = "gemma"
    vocab_size: int = 256000
    max_len: int = 8192
    d_model: int = 2048
    n_heads: int = 8
    n_kv_heads: int | None = 1
    d_head: int | None = 256
    n_layers: int = 18
    d_ff: int = 16384
    dropout: float = 0.0
    attn_dropout: float = 0.0
    activation: str = "geglu_tanh"
    norm: str = "rmsnorm_1p"
    norm_eps: float = 1e-6
    pos_emb: str = "rope"
    use_bias: bool = False
    embed_scale: bool = True


_CITE = "Gemma Team 2024, Gemma: Open Models Based on Gemini Research and Technology (google/gemma-2b)"
KIND = "decoder"
TASKS = ("causal_lm",)

PRESETS: dict[str, Preset] = {
    "gemma-2b": Preset(Config(), _CITE, 2_506_172_416),
    "gemma-tiny": Preset(
        Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, n_kv_heads=1, d_head=32, n_layers=2, d_ff=256),
        "test-sized Gemma (multi-query, head_dim 32 != d_model / n_heads)", 172_352),
}

spec = decoder.spec
init = decoder.init
apply = decoder.apply
init_cache = decoder.init_cache


# ------------------------------------------------------------------------------------------------------------
# Hugging Face mapping (shared with gemma2, which adds its fields and rules to these)
def rope_type(hc: dict) -> str:
    """The RoPE variant of a config.json (transformers < 5: ``rope_scaling``; 5: ``rope_parameters``)."""
    scaling = hc.get("rope_scaling") or hc.get("rope_parameters") or {}
    return scaling.get("rope_type", scaling.get("type", "default"))


def plain_rope(hc: dict) -> str | None:
    kind = rope_type(hc)
    if kind == "default":
        return None
    return (f"{hc.get('model_type')} with RoPE scaling rope_type={kind!r} (rope_scaling / rope_parameters): "
            f"jaxlm's {hc.get('model_type')} supports only rope_type 'default'")


def rope_theta(v: float | None, hc: dict) -> float:
    return float(v if v is not None else (hc.get("rope_parameters") or {}).get("rope_theta", 10000.0))


def gelu_tanh(key: str) -> hfmap.Check:
    # transformers reads Gemma's legacy hidden_act "gelu" as the tanh approximation too (GemmaConfig warns)
    return hfmap.only(key, ("gelu_pytorch_tanh", "gelu", "gelu_new"), "gelu_pytorch_tanh",
                      "{model_type} with {key}={value!r} (Gemma's feed-forward is GeGLU with the tanh GELU)")


def fields(act_key: str) -> tuple[hfmap.Field, ...]:
    """The config.json keys Gemma 1 and 2 share (``act_key``: "hidden_act" in Gemma, "hidden_activation" in
    Gemma 2)."""
    return (
        hfmap.Field("vocab_size", "vocab_size"),
        hfmap.Field("max_position_embeddings", "max_len", 8192),
        hfmap.Field("hidden_size", "d_model"),
        hfmap.Field("num_attention_heads", "n_heads"),
        hfmap.Field("num_key_value_heads", "n_kv_heads", None, write=lambda cfg: cfg.kv_heads,
                    read=lambda g, hc: None if (g or hc["num_attention_heads"]) == hc["num_attention_heads"] else g),
        hfmap.Field("num_hidden_layers", "n_layers"),
        hfmap.Field("intermediate_size", "d_ff"),
        hfmap.Field("head_dim", "d_head", 256, write=lambda cfg: cfg.head_dim,
                    read=lambda k, hc: None if k * hc["num_attention_heads"] == hc["hidden_size"] else k),
        hfmap.Field("rms_norm_eps", "norm_eps", 1e-6),
        hfmap.Field("rope_theta", "rope_theta", None, read=rope_theta),
        hfmap.Field("rope_parameters", write=lambda cfg: {"rope_type": "default", "rope_theta": cfg.rope_theta}),
        hfmap.Field("tie_word_embeddings", "tie_embeddings", True),
        hfmap.Field("attention_bias", write=lambda cfg: False),
        hfmap.Field("attention_dropout", "attn_dropout", 0.0),
        hfmap.Field(act_key, write=lambda cfg: "gelu_pytorch_tanh"),
    )


FIXED = {"norm_position": "pre", "embed_scale": True, "pos_emb": "rope", "norm": "rmsnorm_1p",
         "activation": "geglu_tanh", "final_norm": True, "use_bias": False, "qkv_bias": None, "rope_type": "default"}
NO_BIAS = hfmap.only("attention_bias", (False,), False, "{model_type} with {key}={value} (the released Gemma "
                     "models have no biases; jaxlm's gemma has none)")
L = "model.layers.{i}."
PROJ = (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"))
MLP = (("wi_0", "mlp.gate_proj"), ("wi_1", "mlp.up_proj"), ("wo", "mlp.down_proj"))
RULES = (
    ("embed/tokens", "model.embed_tokens.weight", "copy"),
    ("layers/norm1/scale", L + "input_layernorm.weight", "copy"),
    *((f"layers/attn/{x}/w", L + f"{hf}.weight", "linear1") for x, hf in PROJ),
    ("layers/attn/o/w", L + "self_attn.o_proj.weight", "linear2"),
    *((f"layers/mlp/{x}/w", L + f"{hf}.weight", "linear1") for x, hf in MLP),
    ("final_norm/scale", "model.norm.weight", "copy"),
    ("lm_head/w", "lm_head.weight", "linear1"),  # untied only
)


HF = hfmap.HFMapping(
    model_types={"gemma": "Gemma"},
    architectures={"gemma": "GemmaForCausalLM"},
    fields=fields("hidden_act"),
    fixed={**FIXED, "post_norms": False, "final_logit_softcap": None, "sliding_window": None, "attn_scale": None,
           "attn_softcap": None},
    checks=(gelu_tanh("hidden_act"), plain_rope, NO_BIAS),
    drop=("rope_scaling", "hidden_activation"),
    prefix="model.",
    rules=(*RULES, ("layers/norm2/scale", L + "post_attention_layernorm.weight", "copy")),
    ignored=("rotary_emb.inv_freq", "lm_head.weight", "embed_scale"),  # buffers; the tied head
)
