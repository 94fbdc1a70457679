"""Qwen2 / Qwen2.5 (Qwen team, 2024, "Qwen2 Technical Report" and "Qwen2.5 Technical Report"; model cards
Qwen/Qwen2.5-0.5B and Qwen/Qwen2.5-7B).

LLaMA's layers (pre-norm RMSNorm, RoPE with theta 10^6, SwiGLU, grouped-query attention) with biases on the
query, key and value projections only (``qkv_bias=True``, ``use_bias=False``: no bias on the output
projection or the MLP). Small models tie the output head to the token table (0.5B), large ones do not (7B).
Count: LLaMA's plus (H + 2 G) * K q/k/v biases per layer; 494,032,768 for Qwen2.5-0.5B (tied) and
7,615,616,512 for Qwen2.5-7B.

Deviations:
- ``max_len`` is the checkpoint's ``max_position_embeddings`` (32768 for 0.5B, 131072 for 7B); the model card's
  YaRN extension beyond 32k is a RoPE type jaxlm does not implement (importing a YaRN config is an error
  naming rope_type and the supported values).
- Sliding-window layers (``use_sliding_window``, off in every released Qwen2/2.5 config) are supported
  through ``sliding_window`` and a per-layer ``attn_pattern`` (``max_window_layers`` / ``layer_types``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from jaxlm.models import decoder, hfmap, hfparts, llama
from jaxlm.models.base import Preset


@dataclass(frozen=True, kw_only=True)
class Config(llama.Config):
    family: ClassVar[str] = "qwen2"
    vocab_size: int = 152064
    max_len: int = 131072
    d_model: int = 3584
    n_heads: int = 28
    n_kv_heads: int | None = 4
    n_layers: int = 28
    d_ff: int = 18944
    norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    use_bias: bool = False
    qkv_bias: bool | None = True


KIND = "decoder"
TASKS = ("causal_lm",)

PRESETS: dict[str, Preset] = {
    "qwen2.5-7b": Preset(Config(), "Qwen team 2024, Qwen2.5 Technical Report (Qwen/Qwen2.5-7B)", 7_615_616_512),
    "qwen2.5-0.5b": Preset(
        Config(vocab_size=151936, max_len=32768, d_model=896, n_heads=14, n_kv_heads=2, n_layers=24, d_ff=4864,
               tie_embeddings=True),
        "Qwen team 2024, Qwen2.5 Technical Report (Qwen/Qwen2.5-0.5B, tied embeddings)", 494_032_768),
    "qwen2-tiny": Preset(
        Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=172),
        "test-sized Qwen2 (q/k/v biases, grouped-query attention)", 156_736),
}

spec = decoder.spec
init = decoder.init
apply = decoder.apply
init_cache = decoder.init_cache


def _window_layers(cfg) -> int:
    """``max_window_layers``: the first windowed layer when the windowed layers are a suffix, else n_layers
    (layer_types, also written, is what transformers >= 5 reads)."""
    local = cfg.local_layers
    return local.index(True) if any(local) else cfg.n_layers


_L = llama._L
_QKV = (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"))

# Hugging Face: LLaMA's tensors plus the q/k/v biases; no attention_bias/mlp_bias keys (the class fixes them)
HF = dataclasses.replace(
    llama.HF,
    model_types={"qwen2": "Qwen2"},
    architectures={"qwen2": "Qwen2ForCausalLM"},
    fields=(*(f for f in llama.HF.fields if f.hf not in ("attention_bias", "mlp_bias")),
            *hfparts.window_fields(),
            hfmap.Field("use_sliding_window", write=lambda cfg: any(cfg.local_layers)),
            hfmap.Field("max_window_layers", write=_window_layers)),
    fixed={**llama.HF.fixed, "use_bias": False, "qkv_bias": True},
    checks=(*(c for c in llama.HF.checks if c is not llama._one_bias_switch), hfparts.check_layer_types),
    rules=(*llama.HF.rules, *((f"layers/attn/{x}/b", _L + f"{hf}.bias", "vec") for x, hf in _QKV)),
    gguf=None,
)
