"""A LLaMA-style decoder (Touvron et al., 2023, "Llama 2: Open Foundation and Fine-Tuned Chat Models").

Pre-norm with RMSNorm, rotary position embeddings (rotate-half convention, as in Hugging Face's
``LlamaForCausalLM``), SwiGLU feed-forward, no biases, grouped-query attention (``n_kv_heads`` < ``n_heads``),
untied output head (tied for small models such as SmolLM2).

Deviations:
- ``norm_eps`` defaults to 1e-5 (Llama 2's released config) where the LLaMA paper's code used 1e-6.
- no dropout by default (the papers do not use it); ``dropout`` fields exist for fine-tuning.
- RoPE scaling variants (Llama 3.1 "llama3" rope_type, NTK) are not implemented; presets avoid them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jaxlm.models import decoder
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
HF = None
