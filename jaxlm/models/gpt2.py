"""GPT-2 (Radford et al., 2019, "Language Models are Unsupervised Multitask Learners").

A decoder-only Transformer: learned absolute positions, pre-norm blocks (LayerNorm moved to each
sub-block's input, plus a final LayerNorm), GELU (tanh approximation) FFN of width 4 * d_model, tied input
and output embeddings, residual projections initialised with std 0.02 / sqrt(2 * n_layers).

Deviations:
- none in the architecture. ``dropout``/``attn_dropout`` default to 0.1 as in the released code;
  ``attn_impl``, ``remat``, ``scan_layers`` and ``dtype`` change how, not what, is computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jaxlm.models import decoder, hfmap
from jaxlm.models.base import ModelConfig, Preset


@dataclass(frozen=True, kw_only=True)
class Config(ModelConfig):
    family: ClassVar[str] = "gpt2"
    vocab_size: int = 50257
    max_len: int = 1024
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    d_ff: int = 3072
    activation: str = "gelu_tanh"
    scale_residual_init: bool = True


_CITE = "Radford et al. 2019, Language Models are Unsupervised Multitask Learners"
KIND = "decoder"
TASKS = ("causal_lm",)

PRESETS: dict[str, Preset] = {
    "gpt2-124m": Preset(Config(), _CITE, 124_439_808),
    "gpt2-355m": Preset(Config(d_model=1024, n_heads=16, n_layers=24, d_ff=4096), _CITE, 354_823_168),
    "gpt2-774m": Preset(Config(d_model=1280, n_heads=20, n_layers=36, d_ff=5120), _CITE, 774_030_080),
    "gpt2-1.5b": Preset(Config(d_model=1600, n_heads=25, n_layers=48, d_ff=6400), _CITE, 1_557_611_200),
    "gpt2-tiny": Preset(Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, n_layers=2, d_ff=256),
                        "test-sized GPT-2", 141_056),
}

spec = decoder.spec
init = decoder.init
apply = decoder.apply
init_cache = decoder.init_cache


# ------------------------------------------------------------------------------------------------------------
# Hugging Face mapping
_L = "transformer.h.{i}."
HF = hfmap.HFMapping(
    model_types={"gpt2": "GPT-2"},
    architectures={"gpt2": "GPT2LMHeadModel"},
    fields=(
        hfmap.Field("vocab_size", "vocab_size"),
        hfmap.Field("n_positions", "max_len"),
        hfmap.Field("n_embd", "d_model"),
        hfmap.Field("n_head", "n_heads"),
        hfmap.Field("n_layer", "n_layers"),
        hfmap.Field("n_inner", "d_ff", None, read=lambda v, hc: v or 4 * hc["n_embd"]),  # null = 4 * n_embd
        hfmap.Field("activation_function", "activation", "gelu", values=hfmap.ACTIVATIONS),
        hfmap.Field("layer_norm_epsilon", "norm_eps", 1e-5),
        hfmap.Field("resid_pdrop", "dropout", 0.1),
        hfmap.Field("embd_pdrop", write=lambda cfg: cfg.dropout),
        hfmap.Field("attn_pdrop", "attn_dropout", 0.1),
        hfmap.Field("tie_word_embeddings", "tie_embeddings", True),
    ),
    fixed={"norm_position": "pre", "embed_scale": False, "pos_emb": "learned", "norm": "layernorm",
           "use_bias": True, "final_norm": True},
    checks=tuple(hfmap.only(k, (ok,), ok, "GPT-2 option {key}={value} changes the architecture")
                 for k, ok in (("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False),
                               ("scale_attn_weights", True))),
    export_checks=(hfmap.plain_attention, hfmap.default_head_dim),
    prefix="transformer.",
    rules=(
        ("embed/tokens", "transformer.wte.weight", "copy"),
        ("embed/positions", "transformer.wpe.weight", "copy"),
        ("layers/norm1/scale", _L + "ln_1.weight", "copy"), ("layers/norm1/bias", _L + "ln_1.bias", "copy"),
        ("layers/norm2/scale", _L + "ln_2.weight", "copy"), ("layers/norm2/bias", _L + "ln_2.bias", "copy"),
        *((f"layers/attn/{x}/w", _L + f"attn.c_attn_{x}.weight", "conv1") for x in "qkv"),
        *((f"layers/attn/{x}/b", _L + f"attn.c_attn_{x}.bias", "vec") for x in "qkv"),
        ("layers/attn/o/w", _L + "attn.c_proj.weight", "conv2"), ("layers/attn/o/b", _L + "attn.c_proj.bias", "copy"),
        ("layers/mlp/wi/w", _L + "mlp.c_fc.weight", "conv1"), ("layers/mlp/wi/b", _L + "mlp.c_fc.bias", "copy"),
        ("layers/mlp/wo/w", _L + "mlp.c_proj.weight", "conv1"), ("layers/mlp/wo/b", _L + "mlp.c_proj.bias", "copy"),
        ("final_norm/scale", "transformer.ln_f.weight", "copy"), ("final_norm/bias", "transformer.ln_f.bias", "copy"),
        ("lm_head/w", "lm_head.weight", "linear1"),  # untied only
    ),
    # Conv1D c_attn holds q | k | v along its output axis; the rules name the three parts
    fused=(hfmap.Fused(".attn.c_attn.", (".attn.c_attn_q.", ".attn.c_attn_k.", ".attn.c_attn_v.")),),
    ignored=("attn.bias", "attn.masked_bias", "lm_head.weight"),  # causal-mask buffers; the tied head
)
