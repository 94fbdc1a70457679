"""OLMo 2 (Team OLMo, 2024, "2 OLMo 2 Furious", arXiv:2501.00656; model cards allenai/OLMo-2-1124-7B,
allenai/OLMo-2-1124-13B, allenai/OLMo-2-0325-32B) and OLMo 3 (Team OLMo, 2025, "OLMo 3"; model card
allenai/Olmo-3-1025-7B), one family: OLMo 3 is OLMo 2's layers with sliding-window attention on three
layers of every four.

OLMo 2 changes LLaMA's block for training stability (paper §3.1):

- **norms after the sub-layers, not before**: ``x = x + RMSNorm(Attention(x))``,
  ``x = x + RMSNorm(MLP(x))``, each sub-layer reading the un-normalised residual stream (``post_norms=True``
  with ``pre_norms=False``: the block has ``post_norm1`` / ``post_norm2`` and no ``norm1`` / ``norm2``;
  transformers' ``post_attention_layernorm`` / ``post_feedforward_layernorm``), and a final norm before the
  head;
- **QK-norm over the whole projection**: an RMSNorm over all ``n_heads * head_dim`` query features of a
  token together (keys: ``n_kv_heads * head_dim``), after the projection and before RoPE (``qk_norm="full"``,
  :mod:`jaxlm.nn.attention`), with the model's ``norm_eps``;
- RoPE theta 500,000, SwiGLU, no biases, untied head (LLaMA's otherwise); multi-head attention at 7B/13B,
  grouped-query (40 over 8) at 32B.

OLMo 3 (transformers' ``Olmo3ForCausalLM``, which subclasses the OLMo 2 modules): ``layer_types`` with
``sliding_attention`` on layers i where (i + 1) % 4 != 0 and ``full_attention`` on every fourth, window 4096
(``sliding_window=4096``, ``attn_pattern=("local", "local", "local", "global")``); RoPE scaling, when a
checkpoint has one, applies to the full-attention layers only.

Count (olmo2-7b, 7,298,617,344): the untied 100352 x 4096 table and head, plus 32 layers of q/k/v/o
[4096, 4096], the three SwiGLU matrices 4096 x 11008, the two [4096] QK-norm scales and the two block norms,
plus the final norm.

Deviations:
- RoPE: OLMo 3's released post-trained and long-context checkpoints (allenai/Olmo-3-7B-Instruct,
  allenai/Olmo-3.1-32B-Instruct, the stage-3 revisions of allenai/Olmo-3-1025-7B) use YaRN on the
  full-attention layers (factor 8 over 8192 tokens, 65536 context). jaxlm does not implement YaRN: importing
  such a checkpoint is an error naming rope_type and the supported values. The olmo3 presets are the
  pre-extension configuration (default RoPE, 8192 tokens: MaxText configs/models/olmo3-7b-pt.yml, the
  stage-1/2 revisions of allenai/Olmo-3-1025-7B). An OLMo 3 checkpoint whose sliding and full layers use
  different RoPE (theta or scaling) is refused by name; jaxlm has one RoPE for all layers.
- Local layers use a full-length KV cache with a window mask (as Mistral and Gemma 2 here), which changes
  memory, not results.
- Norm scales multiply in float32 and cast once, as transformers' Olmo2RMSNorm does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from jaxlm.config import ConfigError, check_choice
from jaxlm.models import decoder, hfmap, hfparts, llama
from jaxlm.models.base import Preset
from jaxlm.nn import attention, blocks, positions


@dataclass(frozen=True, kw_only=True)
class Config(llama.Config):
    family: ClassVar[str] = "olmo2"
    vocab_size: int = 100352
    d_model: int = 4096
    n_heads: int = 32
    n_layers: int = 32
    d_ff: int = 11008
    norm_eps: float = 1e-6
    rope_theta: float = 500000.0
    post_norms: bool = True
    pre_norms: bool = False  # no norm on the sub-layers' inputs, only on their outputs (jaxlm.nn.blocks)
    qk_norm: str | None = "full"  # RMSNorm over the whole q / k projection (jaxlm.nn.attention.QK_NORMS)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = f"{self.family}.Config"
        if self.qk_norm is not None:  # None: off
            check_choice(f"{name}.qk_norm", self.qk_norm, [k for k in attention.QK_NORMS if k])
        if not self.pre_norms and not self.post_norms:
            raise ConfigError(f"{name}: pre_norms=False with post_norms=False leaves the blocks without a norm; "
                              f"OLMo 2 has post_norms=True, pre_norms=False.")

    @property
    def attn_cfg(self) -> attention.AttentionConfig:
        return dataclasses.replace(super().attn_cfg, qk_norm=self.qk_norm, qk_norm_eps=self.norm_eps)

    @property
    def block_cfg(self) -> blocks.BlockConfig:
        return dataclasses.replace(super().block_cfg, pre_norms=self.pre_norms)


KIND = "decoder"
TASKS = ("causal_lm",)

_OLMO2 = "Team OLMo 2024, 2 OLMo 2 Furious"
_OLMO3 = ("Team OLMo 2025, OLMo 3; MaxText configs/models/olmo3-7b-pt.yml (allenai/Olmo-3-1025-7B at its "
          "stage-1/2 revisions, before the YaRN context extension)")
_OLMO3_LAYERS = dict(sliding_window=4096, attn_pattern=("local", "local", "local", "global"))
PRESETS: dict[str, Preset] = {
    "olmo2-7b": Preset(Config(), f"{_OLMO2} (config.json of allenai/OLMo-2-1124-7B)", 7_298_617_344),
    "olmo2-13b": Preset(
        Config(d_model=5120, n_heads=40, n_layers=40, d_ff=13824),
        f"{_OLMO2} (config.json of allenai/OLMo-2-1124-13B)", 13_716_198_400),
    "olmo2-32b": Preset(
        Config(d_model=5120, n_heads=40, n_kv_heads=8, n_layers=64, d_ff=27648),
        f"{_OLMO2} (config.json of allenai/OLMo-2-0325-32B, grouped-query 40 over 8)", 32_234_279_936),
    "olmo2-tiny": Preset(
        Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=172),
        "test-sized OLMo 2 (post-sub-layer norms, whole-projection QK-norm, grouped-query)", 156_672),
    "olmo3-7b": Preset(Config(vocab_size=100278, max_len=8192, **_OLMO3_LAYERS), _OLMO3, 7_298_011_136),
    "olmo3-32b": Preset(
        Config(vocab_size=100278, max_len=8192, d_model=5120, n_heads=40, n_kv_heads=8, n_layers=64, d_ff=27648,
               **_OLMO3_LAYERS),
        "Team OLMo 2025, OLMo 3; dimensions of MaxText configs/models/olmo3-32b.yml (allenai/Olmo-3.1-32B-Instruct) "
        "without its YaRN extension: default RoPE over its original 8192 tokens", 32_233_522_176),
    "olmo3-tiny": Preset(
        Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=172,
               sliding_window=4, attn_pattern=("local", "global")),
        "test-sized OLMo 3 (window 4; two layers: local then global, the ends of OLMo 3's 3:1 cycle)", 156_672),
}

spec = decoder.spec
init = decoder.init
apply = decoder.apply
init_cache = decoder.init_cache


# ------------------------------------------------------------------------------------------------------------
# Hugging Face mapping. model_type "olmo2" has no sliding windows; "olmo3" adds layer_types / sliding_window
# and keeps one RoPE per layer type in rope_parameters ({"sliding_attention": {...}, "full_attention": {...}}).
_OLMO3_THETA = 500000.0  # transformers' Olmo3Config.default_theta


def _is_olmo3(hc: dict) -> bool:
    return hc.get("model_type") == "olmo3"


def _layer_types(hc: dict) -> list[str]:
    """config.json ``layer_types``, or Olmo3Config's default (sliding except every fourth); olmo2: all full."""
    n = hc["num_hidden_layers"]
    if hc.get("layer_types") is not None:
        return list(hc["layer_types"])
    if _is_olmo3(hc):
        return ["sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(n)]
    return ["full_attention"] * n


def _ropes(hc: dict) -> dict[str, dict]:
    """RoPE parameters per layer type as transformers builds them: olmo2 has one (a flat rope_parameters or
    rope_theta / rope_scaling); olmo3 a dict per type, rope_scaling going to the full-attention layers and a
    top-level rope_theta to the full-attention layers only (the sliding ones default to 500000), as
    Olmo3Config.convert_rope_params_to_dict does."""
    if not _is_olmo3(hc):
        return {"full_attention": hfparts.rope_params(hc)}
    given = hc.get("rope_parameters") or {}
    per = {t: dict(given.get(t) or {}) for t in ("sliding_attention", "full_attention")}
    scaling = dict(hc.get("rope_scaling") or {})
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    per["full_attention"].update(scaling)
    per["full_attention"].setdefault("rope_theta", hc.get("rope_theta") or _OLMO3_THETA)
    per["sliding_attention"].setdefault("rope_theta", _OLMO3_THETA)
    for p in per.values():
        p.setdefault("rope_type", "default")
        p["rope_theta"] = float(p["rope_theta"])
    return per


def _rope(hc: dict) -> dict:
    """The one RoPE of every layer (:func:`_check_rope` has refused checkpoints where the used types differ)."""
    used = set(_layer_types(hc)) & set(_ropes(hc))
    return _ropes(hc)["full_attention" if "full_attention" in used or not used else "sliding_attention"]


def _check_rope(hc: dict) -> str | None:
    ropes = _ropes(hc)
    for t, p in ropes.items():
        if t in _layer_types(hc) and p["rope_type"] not in positions.ROPE_TYPES:
            where = "rope_scaling" if hc.get("rope_scaling") else "rope_parameters"
            return (f"{where}.rope_type={p['rope_type']!r} (RoPE scaling of this {hc.get('model_type')} "
                    f"checkpoint's {t} layers) is not implemented in jaxlm; supported rope_type values: "
                    f"{', '.join(map(repr, positions.ROPE_TYPES))}")
    used = [t for t in ropes if t in _layer_types(hc)]
    if len(used) == 2 and ropes[used[0]] != ropes[used[1]]:
        return (f"{hc.get('model_type')} with different RoPE on its sliding and full layers "
                f"(sliding_attention {ropes['sliding_attention']}, full_attention {ropes['full_attention']}): "
                f"jaxlm applies one RoPE to every layer")
    return None


def _check_layer_types(hc: dict) -> str | None:
    return hfparts.check_layer_types({**hc, "layer_types": _layer_types(hc)})


def _window(hc: dict) -> tuple[int | None, tuple[str, ...]]:
    """(sliding_window, attn_pattern): OLMo 3's window over its sliding layers (4096 when config.json has
    none), read as None when no layer slides or the window covers the whole context."""
    kinds = [hfparts.LAYER_TYPES[t] for t in _layer_types(hc)]
    sw = hc.get("sliding_window", 4096) if _is_olmo3(hc) else None
    if sw is None or "local" not in kinds or sw >= hc.get("max_position_embeddings", 2048):
        return None, ("local",)
    pattern = _OLMO3_LAYERS["attn_pattern"]
    cycled = tuple(pattern[i % 4] for i in range(len(kinds)))
    return int(sw), (pattern if tuple(kinds) == cycled and len(kinds) >= 4 else tuple(kinds))


def _read_rope(key: str, default: Any):
    return lambda _v, hc: type(default)(_rope(hc).get(key, default))


def _no_attention_bias(hc: dict) -> str | None:
    if not hc.get("attention_bias", False):
        return None
    return (f"{hc.get('model_type')} with attention_bias=True (biases on q/k/v/o but not on the MLP): jaxlm's "
            f"use_bias also adds MLP biases")


def _scaled_local_layers(cfg: Config) -> str | None:
    if cfg.rope_type == "default" or not any(cfg.local_layers):
        return None
    return (f"rope_type={cfg.rope_type!r} with sliding-window layers (OLMo 3 scales RoPE on its full-attention "
            f"layers only; jaxlm scales every layer)")


def _write_config(cfg: Config, hc: dict) -> dict:
    """The model_type follows the layers: sliding windows need olmo3 (olmo2 has none); an olmo3 checkpoint
    stays olmo3. olmo3 writes its RoPE per layer type; olmo2 drops the window keys."""
    olmo3 = any(cfg.local_layers) or _is_olmo3(hc)
    hc = {**hc, "model_type": "olmo3" if olmo3 else "olmo2",
          "architectures": [HF.architectures["olmo3" if olmo3 else "olmo2"]]}
    if olmo3:
        plain = {"rope_type": "default", "rope_theta": cfg.rope_theta}
        hc["rope_parameters"] = {"sliding_attention": plain, "full_attention": hc["rope_parameters"]}
    else:
        for k in ("sliding_window", "layer_types"):
            hc.pop(k, None)
    return hc


_L = llama._L
HF = dataclasses.replace(
    llama.HF,
    model_types={"olmo2": "OLMo 2", "olmo3": "OLMo 3"},
    architectures={"olmo2": "Olmo2ForCausalLM", "olmo3": "Olmo3ForCausalLM"},
    fields=(
        *(f for f in llama.HF.fields if f.hf not in ("attention_bias", "mlp_bias", "rms_norm_eps", "rope_theta",
                                                      "rope_parameters")),
        hfmap.Field("rms_norm_eps", "norm_eps", 1e-5),
        hfmap.Field("rope_theta", "rope_theta", None, read=_read_rope("rope_theta", 10000.0)),
        hfmap.Field("rope_parameters", "rope_type", None, read=_read_rope("rope_type", "default"),
                    write=next(f.write for f in hfparts.rope_fields() if f.ours == "rope_type")),
        *(hfmap.Field("rope_parameters", ours, None, read=_read_rope(hf, d), export=False)
          for ours, (hf, d) in hfparts.ROPE_KEYS.items()),
        hfmap.Field("sliding_window", "sliding_window", None, read=lambda _v, hc: _window(hc)[0],
                    write=lambda cfg: cfg.sliding_window if any(cfg.local_layers) else None),
        hfmap.Field("layer_types", "attn_pattern", None, read=lambda _v, hc: _window(hc)[1],
                    write=lambda cfg: ["sliding_attention" if x else "full_attention" for x in cfg.local_layers]),
        hfmap.Field("attention_bias", write=lambda cfg: False),
    ),
    fixed={**llama.HF.fixed, "use_bias": False, "qkv_bias": None, "post_norms": True, "pre_norms": False,
           "qk_norm": "full"},
    checks=(llama.HF.checks[0], _no_attention_bias, _check_layer_types, _check_rope),
    export_checks=(_scaled_local_layers,),
    drop=("rope_scaling",),
    write_config=_write_config,
    rules=(
        ("embed/tokens", "model.embed_tokens.weight", "copy"),
        ("layers/post_norm1/scale", _L + "post_attention_layernorm.weight", "copy"),
        ("layers/post_norm2/scale", _L + "post_feedforward_layernorm.weight", "copy"),
        *(r for r in llama.HF.rules if r[0].startswith(("layers/attn/", "layers/mlp/")) and r[0].endswith("/w")),
        ("layers/attn/q_norm/scale", _L + "self_attn.q_norm.weight", "vec"),  # [H * K] -> [H, K]
        ("layers/attn/k_norm/scale", _L + "self_attn.k_norm.weight", "vec"),
        ("final_norm/scale", "model.norm.weight", "copy"),
        ("lm_head/w", "lm_head.weight", "linear1"),
    ),
    gguf=None,
)
