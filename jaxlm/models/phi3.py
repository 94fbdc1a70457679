"""Phi-3 (Abdin et al., 2024, "Phi-3 Technical Report: A Highly Capable Language Model Locally on Your Phone").

A LLaMA-style decoder (the paper: "a transformer decoder architecture ... with a similar block structure as
Llama-2"): pre-norm RMSNorm, RoPE, SwiGLU, no biases, untied head, vocabulary 32064. What differs is the
checkpoint layout: Hugging Face's ``Phi3ForCausalLM`` stores q, k and v as one fused ``qkv_proj`` (rows q | k |
v, so under grouped-query attention the parts differ in size) and the SwiGLU gate and up projections as one
``gate_up_proj`` (rows gate | up); import splits them into jaxlm's separate ``attn/{q,k,v}`` and
``mlp/{wi_0,wi_1}`` and export fuses them back (``hfmap.Fused``). The released Phi-3-mini-4k config restricts
every layer to a sliding window of 2047 keys (``sliding_window=2047``), which the preset follows.

Parameter count (phi3-mini, 3,821,079,552): an untied table and head 32064 x 3072 each, plus 32 layers of
q, k, v, o (3072 x 3072 each), the SwiGLU gate, up and down (3072 x 8192 each) and two norm scales, plus the
final norm scale.

Deviations:
- the long-context variants' RoPE scaling (``rope_type="longrope"``, Phi-3-mini-128k) and partial rotary
  embeddings (``partial_rotary_factor`` < 1) are not implemented; such configs are refused.
- no dropout by default (``resid_pdrop``/``embd_pdrop``/``attention_dropout`` are 0 in the release).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jaxlm.models import decoder, hfmap
from jaxlm.models.base import ModelConfig, Preset


@dataclass(frozen=True, kw_only=True)
class Config(ModelConfig):
    family: ClassVar[str] = "phi3"
    vocab_size: int = 32064
    max_len: int = 4096
    d_model: int = 3072
    n_heads: int = 32
    n_layers: int = 32
    d_ff: int = 8192
    dropout: float = 0.0
    attn_dropout: float = 0.0
    activation: str = "swiglu"
    norm: str = "rmsnorm"
    pos_emb: str = "rope"
    tie_embeddings: bool = False
    use_bias: bool = False
    pad_id: int = 32000
    sliding_window: int | None = 2047  # every layer (attn_pattern ("local",)), as the released config.json


KIND = "decoder"
TASKS = ("causal_lm",)

PRESETS: dict[str, Preset] = {
    "phi3-mini": Preset(Config(), "Abdin et al. 2024, Phi-3 Technical Report (microsoft/Phi-3-mini-4k-instruct)",
                        3_821_079_552),
    "phi3-tiny": Preset(
        Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=172, pad_id=0,
               sliding_window=None),
        "test-sized Phi-3 (grouped-query: the fused qkv_proj splits into unequal parts)", 156_480),
}

spec = decoder.spec
init = decoder.init
apply = decoder.apply
init_cache = decoder.init_cache


# ------------------------------------------------------------------------------------------------------------
# Hugging Face mapping
def _rope(hc: dict) -> str | None:
    p = hc.get("rope_scaling") or hc.get("rope_parameters") or {}
    kind = p.get("rope_type", p.get("type", "default"))
    if kind != "default":
        return (f"phi3 with RoPE scaling rope_type={kind!r} (rope_scaling / rope_parameters; the 128k-context "
                f"Phi-3 models): jaxlm's phi3 supports only rope_type 'default'")
    prf = p.get("partial_rotary_factor", hc.get("partial_rotary_factor", 1.0))
    if prf != 1.0:
        return f"phi3 with partial_rotary_factor={prf} (jaxlm's phi3 rotates every head dimension, 1.0)"
    return None


def _read_window(w: int | None, hc: dict) -> int | None:
    # a window at least the context long is full attention (jaxlm's window may not exceed max_len)
    return None if w is None or w >= hc.get("max_position_embeddings", 4096) else int(w)


def _rope_theta(v: float | None, hc: dict) -> float:
    return float(v if v is not None else (hc.get("rope_parameters") or {}).get("rope_theta", 10000.0))


def _qkv_sizes(cfg: Config) -> tuple[int, int, int]:
    return cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim


_L = "model.layers.{i}."
HF = hfmap.HFMapping(
    model_types={"phi3": "Phi-3"},
    architectures={"phi3": "Phi3ForCausalLM"},
    fields=(
        hfmap.Field("vocab_size", "vocab_size"),
        hfmap.Field("max_position_embeddings", "max_len", 4096),
        hfmap.Field("original_max_position_embeddings", write=lambda cfg: cfg.max_len),
        hfmap.Field("hidden_size", "d_model"),
        hfmap.Field("num_attention_heads", "n_heads"),
        hfmap.Field("num_key_value_heads", "n_kv_heads", None, write=lambda cfg: cfg.kv_heads,
                    read=lambda g, hc: None if (g or hc["num_attention_heads"]) == hc["num_attention_heads"] else g),
        hfmap.Field("num_hidden_layers", "n_layers"),
        hfmap.Field("intermediate_size", "d_ff"),
        hfmap.Field("rms_norm_eps", "norm_eps", 1e-5),
        hfmap.Field("rope_theta", "rope_theta", None, read=_rope_theta),
        hfmap.Field("rope_parameters", write=lambda cfg: {"rope_type": "default", "rope_theta": cfg.rope_theta,
                                                          "partial_rotary_factor": 1.0}),
        hfmap.Field("tie_word_embeddings", "tie_embeddings", False),
        hfmap.Field("resid_pdrop", "dropout", 0.0),
        hfmap.Field("embd_pdrop", write=lambda cfg: cfg.dropout),
        hfmap.Field("attention_dropout", "attn_dropout", 0.0),
        hfmap.Field("sliding_window", "sliding_window", None, read=_read_window),
    ),
    fixed={"norm_position": "pre", "embed_scale": False, "pos_emb": "rope", "norm": "rmsnorm",
           "activation": "swiglu", "final_norm": True, "use_bias": False, "post_norms": False,
           "final_logit_softcap": None, "attn_pattern": ("local",), "attn_scale": None, "attn_softcap": None,
           "qkv_bias": None, "rope_type": "default"},
    constants={"hidden_act": "silu"},
    checks=(hfmap.only("hidden_act", ("silu", "swish"), "silu",
                       "{model_type} with hidden_act={value!r} (jaxlm's Phi-3 uses SwiGLU, 'silu')"),
            _rope),
    export_checks=(hfmap.default_head_dim,),
    drop=("rope_scaling", "partial_rotary_factor"),
    prefix="model.",
    rules=(
        ("embed/tokens", "model.embed_tokens.weight", "copy"),
        ("layers/norm1/scale", _L + "input_layernorm.weight", "copy"),
        ("layers/norm2/scale", _L + "post_attention_layernorm.weight", "copy"),
        *((f"layers/attn/{x}/w", _L + f"self_attn.{x}_part.weight", "linear1") for x in "qkv"),
        ("layers/attn/o/w", _L + "self_attn.o_proj.weight", "linear2"),
        ("layers/mlp/wi_0/w", _L + "mlp.gate_part.weight", "linear1"),
        ("layers/mlp/wi_1/w", _L + "mlp.up_part.weight", "linear1"),
        ("layers/mlp/wo/w", _L + "mlp.down_proj.weight", "linear1"),
        ("final_norm/scale", "model.norm.weight", "copy"),
        ("lm_head/w", "lm_head.weight", "linear1"),  # untied only
    ),
    # torch nn.Linear weights are [out, in]: the fused parts are stacked along the rows (axis 0)
    fused=(hfmap.Fused(".self_attn.qkv_proj.", (".self_attn.q_part.", ".self_attn.k_part.", ".self_attn.v_part."),
                       axis=0, sizes=_qkv_sizes),
           hfmap.Fused(".mlp.gate_up_proj.", (".mlp.gate_part.", ".mlp.up_part."), axis=0)),
    ignored=("rotary_emb.inv_freq", "lm_head.weight"),  # a buffer; the tied head
)
