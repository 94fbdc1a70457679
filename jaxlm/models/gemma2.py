"""Gemma 2 (Gemma Team, 2024, "Gemma 2: Improving Open Language Models at a Practical Size").

Gemma's decoder (``(1 + w)`` RMSNorm, embeddings times sqrt(d_model), GeGLU with the tanh GELU, RoPE, head_dim
256, tied head) with the paper's §2 changes:

- local sliding-window attention (4096 tokens) and global attention **alternating** layer by layer, starting
  with a local layer (``attn_pattern=("local", "global")``, ``sliding_window=4096``);
- logit soft-capping ``cap * tanh(x / cap)`` of the attention scores (cap 50, ``attn_softcap``) and of the
  final logits (cap 30, ``final_logit_softcap``);
- pre- *and* post-norms around each sub-block (``post_norms=True``: RMSNorm on the input and on the output of
  attention and of the feed-forward, before the residual sum);
- grouped-query attention (8 query heads over 4 key/value heads in 2B); the scores are scaled by
  ``query_pre_attn_scalar ** -0.5`` (256 for 2B, = head_dim, so ``attn_scale=None``: the default 1/sqrt(256)).

Parameter count (gemma2-2b, 2,614,341,888): the tied table 256000 x 2304, plus 26 layers of q [2304, 8 x 256],
k and v [2304, 4 x 256], o [8 x 256, 2304], the three GeGLU matrices 2304 x 9216 and four norm scales, plus the
final norm scale.

Deviations:
- none in the architecture. Local layers use a full-length KV cache with a window mask (no rolling buffer of
  4096 slots), which changes memory, not results.
- no dropout by default; ``attn_impl``, ``remat``, ``scan_layers`` and ``dtype`` change how, not what, is
  computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jaxlm.models import decoder, gemma, hfmap
from jaxlm.models.base import ModelConfig, Preset


@dataclass(frozen=True, kw_only=True)
class Config(ModelConfig):
    family: ClassVar[str] = "gemma2"
    vocab_size: int = 256000
    max_len: int = 8192
    d_model: int = 2304
    n_heads: int = 8
    n_kv_heads: int | None = 4
    d_head: int | None = 256
    n_layers: int = 26
    d_ff: int = 9216
    dropout: float = 0.0
    attn_dropout: float = 0.0
    activation: str = "geglu_tanh"
    norm: str = "rmsnorm_1p"
    norm_eps: float = 1e-6
    pos_emb: str = "rope"
    use_bias: bool = False
    embed_scale: bool = True
    post_norms: bool = True
    final_logit_softcap: float | None = 30.0
    attn_softcap: float | None = 50.0
    sliding_window: int | None = 4096
    attn_pattern: tuple[str, ...] = ("local", "global")


KIND = "decoder"
TASKS = ("causal_lm",)

PRESETS: dict[str, Preset] = {
    "gemma2-2b": Preset(Config(), "Gemma Team 2024, Gemma 2: Improving Open Language Models at a Practical Size "
                                  "(google/gemma-2-2b)", 2_614_341_888),
    "gemma2-tiny": Preset(
        Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, n_kv_heads=2, d_head=32, n_layers=2, d_ff=256,
               sliding_window=16),
        "test-sized Gemma 2 (window 16: layer 0 local, layer 1 global)", 180_800),
}

spec = decoder.spec
init = decoder.init
apply = decoder.apply
init_cache = decoder.init_cache


# ------------------------------------------------------------------------------------------------------------
# Hugging Face mapping
_KINDS = {"sliding_attention": "local", "full_attention": "global"}


def _read_pattern(types: list | None, hc: dict) -> tuple[str, ...]:
    """config.json ``layer_types`` -> ``attn_pattern`` (the alternating default when absent or equal to it)."""
    n = hc["num_hidden_layers"]
    if types is None:
        return ("local", "global")
    bad = sorted({t for t in types if t not in _KINDS})
    if bad:
        raise hfmap.UnsupportedModelError(f"gemma2 layer_types {bad} are not supported (known: {sorted(_KINDS)}).")
    pattern = tuple(_KINDS[t] for t in types)
    return ("local", "global") if pattern == tuple(("local", "global")[i % 2] for i in range(n)) else pattern


def _write_pattern(cfg: Config) -> list[str]:
    back = {v: k for k, v in _KINDS.items()}
    return [back["local" if local else "global"] for local in cfg.local_layers]


def _read_scale(q: float | None, hc: dict) -> float | None:
    k = hc.get("head_dim", 256)
    return None if q is None or q == k else float(q) ** -0.5


def _write_scale(cfg: Config) -> int | float:
    if cfg.attn_scale is None:
        return cfg.head_dim
    q = cfg.attn_scale**-2
    return round(q) if abs(q - round(q)) < 1e-6 else q


def _read_window(w: int | None, hc: dict) -> int | None:
    # a window at least the context long is global attention; jaxlm's window may not exceed max_len
    return None if w is None else min(int(w), hc.get("max_position_embeddings", 8192))


HF = hfmap.HFMapping(
    model_types={"gemma2": "Gemma 2"},
    architectures={"gemma2": "Gemma2ForCausalLM"},
    fields=(
        *gemma.fields("hidden_activation"),
        hfmap.Field("sliding_window", "sliding_window", 4096, read=_read_window),
        hfmap.Field("layer_types", "attn_pattern", None, read=_read_pattern, write=_write_pattern),
        hfmap.Field("query_pre_attn_scalar", "attn_scale", 256, read=_read_scale, write=_write_scale),
        hfmap.Field("attn_logit_softcapping", "attn_softcap", 50.0),
        hfmap.Field("final_logit_softcapping", "final_logit_softcap", 30.0),
    ),
    fixed={**gemma.FIXED, "post_norms": True},
    checks=(gemma.gelu_tanh("hidden_activation"), gemma.plain_rope, gemma.NO_BIAS),
    drop=("rope_scaling", "hidden_act", "cache_implementation"),
    prefix="model.",
    rules=(
        *gemma.RULES,
        ("layers/post_norm1/scale", gemma.L + "post_attention_layernorm.weight", "copy"),
        ("layers/norm2/scale", gemma.L + "pre_feedforward_layernorm.weight", "copy"),
        ("layers/post_norm2/scale", gemma.L + "post_feedforward_layernorm.weight", "copy"),
    ),
    ignored=("rotary_emb.inv_freq", "lm_head.weight", "embed_scale"),
)
