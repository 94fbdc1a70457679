"""Mistral 7B (Jiang et al., 2023, "Mistral 7B"; model card mistralai/Mistral-7B-v0.1).

LLaMA's layers (pre-norm RMSNorm, RoPE, SwiGLU, grouped-query attention with 8 key/value heads, no biases,
untied head) with sliding-window attention in every layer: a token attends to itself and the W - 1 tokens
before it (W = 4096; transformers' ``kv_idx > q_idx - sliding_window``), so information travels W tokens
per layer. Parameters are LLaMA's: 7,241,732,096 for the 7B.

Deviations:
- KV cache: the full-length cache plus the window mask, not the paper's rolling buffer of W slots (section
  2, "Rolling Buffer Cache"); same outputs, more memory past W tokens (jaxlm.nn.attention's docstring says why).
- No pre-fill chunking (paper section 2): a prompt runs in one pass with the window mask.
- Later Mistral releases (v0.2/v0.3) drop the window (``sliding_window: null``); they import as this family
  with ``sliding_window=None`` (full attention).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from jaxlm.models import decoder, hfparts, llama
from jaxlm.models.base import Preset


@dataclass(frozen=True, kw_only=True)
class Config(llama.Config):
    family: ClassVar[str] = "mistral"
    vocab_size: int = 32000
    max_len: int = 32768
    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = 8
    n_layers: int = 32
    d_ff: int = 14336
    sliding_window: int | None = 4096


KIND = "decoder"
TASKS = ("causal_lm",)

PRESETS: dict[str, Preset] = {
    "mistral-7b": Preset(Config(), "Jiang et al. 2023, Mistral 7B (mistralai/Mistral-7B-v0.1)", 7_241_732_096),
    "mistral-tiny": Preset(
        Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=172,
               sliding_window=4),
        "test-sized Mistral (a 4-token window, shorter than the test sequences)", 156_480),
}

spec = decoder.spec
init = decoder.init
apply = decoder.apply
init_cache = decoder.init_cache


def _all_local(cfg) -> str | None:
    """Export check: MistralForCausalLM windows every layer or none."""
    if len(set(cfg.local_layers)) <= 1:
        return None
    return f"attn_pattern={cfg.attn_pattern!r} (a window on some layers only)"


# Hugging Face: LLaMA's tensors and keys plus the window (layer_types is not a Mistral key: not written)
HF = dataclasses.replace(
    llama.HF,
    model_types={"mistral": "Mistral"},
    architectures={"mistral": "MistralForCausalLM"},
    fields=(*llama.HF.fields, *hfparts.window_fields(layer_types=False)),
    checks=(*llama.HF.checks, hfparts.check_layer_types),
    export_checks=(*llama.HF.export_checks, _all_local),
    gguf=None,  # llama.cpp files of Mistral models declare the "llama" architecture (llama's mapping)
)
