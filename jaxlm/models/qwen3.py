"""Qwen3, the dense models (Qwen team, 2025, "Qwen3 Technical Report", arXiv:2505.09388; model cards
Qwen/Qwen3-0.6B ... Qwen/Qwen3-32B).

LLaMA's layers (pre-norm RMSNorm, RoPE with theta 10^6, SwiGLU, grouped-query attention, no biases) with two
changes from Qwen2 (report §2): the q/k/v biases are gone, and **QK-norm** is added: an RMSNorm over each
head's ``head_dim`` features, one learned [head_dim] scale for all query heads and one for all key heads,
applied after the projection and before RoPE (``qk_norm="head"``, :mod:`jaxlm.nn.attention`). ``head_dim``
is 128 at every size, independent of d_model / n_heads (0.6B: 16 heads x 128 = 2048 > d_model 1024), so
``d_head`` is set. The 0.6B, 1.7B and 4B models tie the output head to the token table; 8B and larger do
not. Count: LLaMA's plus 2 * head_dim QK-norm scales per layer; 596,049,920 for Qwen3-0.6B (tied) and
8,190,735,360 for Qwen3-8B.

Deviations:
- ``max_len`` is the released ``max_position_embeddings`` (40960; the model cards' 131072 with YaRN is a
  RoPE type jaxlm does not implement: importing a YaRN config is an error naming rope_type and the supported
  values).
- Sliding-window layers (``use_sliding_window``, off in every released Qwen3 config) are supported through
  ``sliding_window`` and ``attn_pattern`` (``max_window_layers`` / ``layer_types``), as in Qwen2.
- ``attention_bias=True`` (biases on q/k/v/o and none on the MLP; no released Qwen3 uses it) is refused on
  import: jaxlm's ``use_bias`` covers the MLP too.
- The QK-norm and the block norms multiply by their scale in float32 and cast once (transformers' Qwen3RMSNorm
  casts to the compute dtype before the multiply); identical in float32, within rounding in bfloat16.
- The Qwen3 mixture-of-experts models (30B-A3B, 235B-A22B) are not part of this family.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from jaxlm.config import check_choice
from jaxlm.models import decoder, hfmap, hfparts, llama, qwen2
from jaxlm.models.base import Preset
from jaxlm.nn import attention


@dataclass(frozen=True, kw_only=True)
class Config(llama.Config):
    family: ClassVar[str] = "qwen3"
    vocab_size: int = 151936
    max_len: int = 40960
    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = 8
    d_head: int | None = 128
    n_layers: int = 36
    d_ff: int = 12288
    norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    qk_norm: str | None = "head"  # RMSNorm of each q / k head before RoPE (jaxlm.nn.attention.QK_NORMS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.qk_norm is not None:  # None: off
            check_choice(f"{self.family}.Config.qk_norm", self.qk_norm, [k for k in attention.QK_NORMS if k])

    @property
    def attn_cfg(self) -> attention.AttentionConfig:
        # the QK-norm uses the model's RMSNorm epsilon (transformers: rms_norm_eps for q_norm / k_norm too)
        return dataclasses.replace(super().attn_cfg, qk_norm=self.qk_norm, qk_norm_eps=self.norm_eps)


KIND = "decoder"
TASKS = ("causal_lm",)

_CARD = "Qwen team 2025, Qwen3 Technical Report"
PRESETS: dict[str, Preset] = {
    "qwen3-0.6b": Preset(
        Config(d_model=1024, n_heads=16, n_layers=28, d_ff=3072, tie_embeddings=True),
        f"{_CARD} (config.json of Qwen/Qwen3-0.6B; MaxText configs/models/qwen3-0.6b.yml)", 596_049_920),
    "qwen3-1.7b": Preset(
        Config(d_model=2048, n_heads=16, n_layers=28, d_ff=6144, tie_embeddings=True),
        f"{_CARD} (Qwen/Qwen3-1.7B; MaxText configs/models/qwen3-1.7b.yml)", 1_720_574_976),
    "qwen3-4b": Preset(
        Config(d_model=2560, n_heads=32, n_layers=36, d_ff=9728, tie_embeddings=True),
        f"{_CARD} (Qwen/Qwen3-4B; MaxText configs/models/qwen3-4b.yml)", 4_022_468_096),
    "qwen3-8b": Preset(Config(), f"{_CARD} (Qwen/Qwen3-8B, untied head; MaxText configs/models/qwen3-8b.yml)",
                       8_190_735_360),
    "qwen3-14b": Preset(
        Config(d_model=5120, n_heads=40, n_layers=40, d_ff=17408),
        f"{_CARD} (Qwen/Qwen3-14B; MaxText configs/models/qwen3-14b.yml)", 14_768_307_200),
    "qwen3-32b": Preset(
        Config(d_model=5120, n_heads=64, n_layers=64, d_ff=25600),
        f"{_CARD} (Qwen/Qwen3-32B; MaxText configs/models/qwen3-32b.yml)", 32_762_123_264),
    "qwen3-tiny": Preset(
        Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, n_kv_heads=2, d_head=32, n_layers=2, d_ff=172),
        "test-sized Qwen3 (QK-norm; head_dim 32, so 4 heads x 32 = 128 != d_model 64)", 181_184),
}

spec = decoder.spec
init = decoder.init
apply = decoder.apply
init_cache = decoder.init_cache


# ------------------------------------------------------------------------------------------------------------
# Hugging Face mapping
def _no_attention_bias(hc: dict) -> str | None:
    if not hc.get("attention_bias", False):
        return None
    return ("qwen3 with attention_bias=True (biases on q/k/v/o but not on the MLP): jaxlm's use_bias also adds "
            "MLP biases")


def _window(hc: dict) -> dict:
    # transformers' Qwen3Config drops sliding_window unless use_sliding_window is set
    return hc if hc.get("use_sliding_window", False) else {**hc, "sliding_window": None}


def _read_head_dim(k: int | None, hc: dict) -> int | None:
    k = k or 128  # Qwen3Config's default when config.json has none
    return None if k * hc["num_attention_heads"] == hc["hidden_size"] else k


_L = llama._L
HF = dataclasses.replace(
    llama.HF,
    model_types={"qwen3": "Qwen3"},
    architectures={"qwen3": "Qwen3ForCausalLM"},
    fields=(*(f for f in llama.HF.fields if f.hf not in ("attention_bias", "mlp_bias", "head_dim",
                                                          "max_position_embeddings")),
            hfmap.Field("max_position_embeddings", "max_len", 32768),
            hfmap.Field("head_dim", "d_head", 128, write=lambda cfg: cfg.head_dim, read=_read_head_dim),
            hfmap.Field("sliding_window", "sliding_window", None,
                        read=lambda _v, hc: hfparts.window(_window(hc))[0],
                        write=lambda cfg: cfg.sliding_window if any(cfg.local_layers) else None),
            hfmap.Field("layer_types", "attn_pattern", None, read=lambda _v, hc: hfparts.window(_window(hc))[1],
                        write=lambda cfg: ["sliding_attention" if x else "full_attention" for x in cfg.local_layers]),
            hfmap.Field("use_sliding_window", write=lambda cfg: any(cfg.local_layers)),
            hfmap.Field("max_window_layers", write=qwen2._window_layers),
            hfmap.Field("attention_bias", write=lambda cfg: False)),
    fixed={**llama.HF.fixed, "use_bias": False, "qkv_bias": None, "qk_norm": "head"},
    checks=(*(c for c in llama.HF.checks if c is not llama._one_bias_switch), _no_attention_bias,
            hfparts.check_layer_types),
    rules=(*(r for r in llama.HF.rules if not r[0].endswith("/b")),
           ("layers/attn/q_norm/scale", _L + "self_attn.q_norm.weight", "copy"),
           ("layers/attn/k_norm/scale", _L + "self_attn.k_norm.weight", "copy")),
    gguf=None,
)
