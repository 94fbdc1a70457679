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

from jaxlm.models import decoder
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
HF = None
