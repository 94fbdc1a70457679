"""GPT-3 (Brown et al., 2020, "Language Models are Few-Shot Learners"), and EleutherAI's GPT-Neo checkpoints.

§2.1 of the paper: "We use the same model and architecture as GPT-2, including the modified initialization,
pre-normalization, and reversible tokenization described therein, with the exception that we use alternating
dense and locally banded sparse attention patterns in the layers of the transformer, similar to the Sparse
Transformer." So: learned absolute positions over a 2048-token context, pre-norm LayerNorm blocks plus a final
LayerNorm, GELU (tanh) FFN of width d_ff = 4 * d_model, biases everywhere, tied input/output embeddings over
GPT-2's 50,257-token BPE vocabulary, residual projections initialised with std 0.02 / sqrt(2 * n_layers); and
layers alternating between dense causal attention and causal attention restricted to a local band
(``attn_pattern=("global", "local")``: even layers dense, odd layers banded, ``sliding_window`` keys).

Table 2.1, row by row (n_layers, d_model, n_heads, d_head; context 2048 and vocabulary 50,257 in all):

=========== ====== ======= ======= ====== ==================== ==========================================
preset      layers d_model n_heads d_head attention width H*K  exact count (paper's nominal)
=========== ====== ======= ======= ====== ==================== ==========================================
gpt3-125m   12     768     12      64     768                  125,226,240 (125M)
gpt3-350m   24     1024    16      64     1024                 355,871,744 (350M)
gpt3-760m   24     1536    16      96     1536                 760,300,032 (760M)
gpt3-1.3b   24     2048    24      128    3072 (!= d_model)    1,517,123,584 (1.3B)
gpt3-2.7b   32     2560    32      80     2560                 2,651,553,280 (2.7B)
gpt3-6.7b   32     4096    32      128    4096                 6,658,404,352 (6.7B)
gpt3-13b    40     5140    40      128    5120 (!= d_model)    12,936,488,380 (13B)
gpt3-175b   96     12288   96      128    12288                174,604,259,328 (175B)
=========== ====== ======= ======= ====== ==================== ==========================================

How the count is computed (D = d_model, A = n_heads * d_head, the attention width, V = 50,257, T = 2048):
each layer has q, k, v projections D x A with biases A, the output projection A x D with bias D, the FFN
D x 4D and 4D x D with biases 4D and D, and two LayerNorms (scale and bias, 2D each):
``4 D A + 3 A + D + 8 D^2 + 5 D + 4 D``; the model adds the token table V x D (tied with the output head),
the position table T x D and the final LayerNorm 2D. Where A != D (the XL and 13B rows) the projections are
D x A and A x D exactly as printed; the XL row's 24 x 128 heads then give 1.52B parameters, 17% over the
nominal 1.3B (its width 2048 with 16 heads of 128, say, would give 1.32B): the table's own numbers are used.

GPT-Neo (``GPTNeoForCausalLM``, Black et al. 2021, EleutherAI's open replication) imports and exports through
this family. It has the same alternating dense / local pattern (``attention_types`` [["global", "local"], L/2],
``window_size`` 256), and differs from GPT-3 as the paper describes it in: no biases on the q, k and v
projections (``qkv_bias=False``; the output projection and the FFN keep theirs); attention scores *not*
scaled by 1/sqrt(d_head) (``attn_scale=1.0``); its sizes (125M: 12 x 768 x 12 heads, 1.3B: 24 x 2048 x 16
heads, 2.7B: 32 x 2560 x 20 heads) are not Table 2.1's; and no dropout in the released configs. A GPT-3
preset (q/k/v biases, scaled scores) therefore has no GPT-Neo checkpoint form and export says so.

Deviations:
- the band width of the local layers is not given in the paper; jaxlm uses 256 keys (``sliding_window=256``,
  the query and the 255 before it), GPT-Neo's ``window_size`` (EleutherAI gpt-neo configs, following the
  Sparse Transformer's local attention, Child et al. 2019, whose blocks are of this order). Which layers are
  banded is not given either: even layers dense, odd layers banded, as GPT-Neo.
- the band is applied as a mask over a full-length KV cache (no rolling buffer), so memory per banded layer is
  that of a dense layer; the Sparse Transformer's blocked kernels are not used (the result is the same).
- dropout defaults to 0.1 (GPT-2's released code; the paper does not state GPT-3's).
- the 13B row's d_model 5140 is taken as printed (its heads give width 5120; 5140 is likely a misprint of
  5120, which would make the count 12,853,386,240).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jaxlm.models import decoder, hfmap
from jaxlm.models.base import ModelConfig, Preset


@dataclass(frozen=True, kw_only=True)
class Config(ModelConfig):
    family: ClassVar[str] = "gpt3"
    vocab_size: int = 50257
    max_len: int = 2048
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    d_ff: int = 3072
    activation: str = "gelu_tanh"
    scale_residual_init: bool = True
    sliding_window: int | None = 256  # the band of the local layers (not in the paper: see Deviations)
    attn_pattern: tuple[str, ...] = ("global", "local")  # dense, banded, dense, ... (§2.1)


_CITE = "Brown et al. 2020, Language Models are Few-Shot Learners, Table 2.1"
KIND = "decoder"
TASKS = ("causal_lm",)


def _row(L: int, D: int, H: int, K: int) -> Config:
    return Config(n_layers=L, d_model=D, n_heads=H, d_head=K, d_ff=4 * D)


def _neo(L: int, D: int, H: int) -> Config:
    return Config(n_layers=L, d_model=D, n_heads=H, d_ff=4 * D, qkv_bias=False, attn_scale=1.0, dropout=0.0,
                  attn_dropout=0.0)


# (name, n_layers, d_model, n_heads, d_head, exact count, nominal)
TABLE_2_1 = (
    ("gpt3-125m", 12, 768, 12, 64, 125_226_240, "125M"),
    ("gpt3-350m", 24, 1024, 16, 64, 355_871_744, "350M"),
    ("gpt3-760m", 24, 1536, 16, 96, 760_300_032, "760M"),
    ("gpt3-1.3b", 24, 2048, 24, 128, 1_517_123_584, "1.3B"),
    ("gpt3-2.7b", 32, 2560, 32, 80, 2_651_553_280, "2.7B"),
    ("gpt3-6.7b", 32, 4096, 32, 128, 6_658_404_352, "6.7B"),
    ("gpt3-13b", 40, 5140, 40, 128, 12_936_488_380, "13B"),
    ("gpt3-175b", 96, 12288, 96, 128, 174_604_259_328, "175B"),
)

PRESETS: dict[str, Preset] = {
    **{name: Preset(_row(L, D, H, K), _CITE, n, note=f"paper: {nominal}")
       for name, L, D, H, K, n, nominal in TABLE_2_1},
    # EleutherAI's GPT-Neo checkpoints: GPT-3's pattern, no q/k/v biases, unscaled scores, no dropout
    **{name: Preset(_neo(L, D, H), "Black et al. 2021, GPT-Neo (EleutherAI/" + name + ")", n)
       for name, L, D, H, n in (("gpt-neo-125m", 12, 768, 12, 125_198_592), ("gpt-neo-1.3b", 24, 2048, 16, 1_315_575_808),
                                ("gpt-neo-2.7b", 32, 2560, 20, 2_651_307_520))},
    "gpt3-tiny": Preset(Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, d_head=24, n_layers=2, d_ff=256,
                               sliding_window=16),
                        "test-sized GPT-3 (attention width 4 x 24 = 96 != d_model 64; band 16)", 157_632),
}

spec = decoder.spec
init = decoder.init
apply = decoder.apply
init_cache = decoder.init_cache



# ------------------------------------------------------------------------------------------------------------
# Hugging Face mapping: EleutherAI's GPT-Neo (GPTNeoForCausalLM), the open model with GPT-3's layer pattern
def _expand(types: list | None, hc: dict) -> tuple[str, ...]:
    """GPT-Neo's ``attention_types`` ``[[kinds, repeat], ...]`` -> ``attn_pattern`` (one kind per layer, or
    the repeating unit when the whole stack repeats one)."""
    types = types or [[["global", "local"], hc["num_layers"] // 2]]
    layers = tuple(k for kinds, rep in types for _ in range(rep) for k in kinds)
    bad = sorted(set(layers) - {"global", "local"})
    if bad:
        raise hfmap.UnsupportedModelError(f"gpt_neo attention_types {bad} are not supported (global, local).")
    if len(layers) != hc["num_layers"]:
        raise ValueError(f"gpt_neo attention_types give {len(layers)} layers but num_layers={hc['num_layers']}.")
    for n in (1, 2):
        if len(layers) % n == 0 and layers == layers[:n] * (len(layers) // n):
            return layers[:n]
    return layers


def _attention_types(cfg: Config) -> list:
    kinds = ["local" if local else "global" for local in cfg.local_layers]
    unit = list(cfg.attn_pattern)
    if cfg.n_layers % len(unit) == 0 and kinds == unit * (cfg.n_layers // len(unit)):
        return [[unit, cfg.n_layers // len(unit)]]
    return [[[k], 1] for k in kinds]


def _window(cfg: Config) -> int:
    return cfg.max_len if cfg.sliding_window is None else cfg.sliding_window


_L = "transformer.h.{i}."
_A = _L + "attn.attention."
HF = hfmap.HFMapping(
    model_types={"gpt_neo": "GPT-Neo"},
    architectures={"gpt_neo": "GPTNeoForCausalLM"},
    fields=(
        hfmap.Field("vocab_size", "vocab_size"),
        hfmap.Field("max_position_embeddings", "max_len", 2048),
        hfmap.Field("hidden_size", "d_model"),
        hfmap.Field("num_heads", "n_heads"),
        hfmap.Field("num_layers", "n_layers"),
        hfmap.Field("intermediate_size", "d_ff", None, read=lambda v, hc: v or 4 * hc["hidden_size"]),
        hfmap.Field("activation_function", "activation", "gelu_new", values=hfmap.ACTIVATIONS),
        hfmap.Field("layer_norm_epsilon", "norm_eps", 1e-5),
        hfmap.Field("resid_dropout", "dropout", 0.0),
        hfmap.Field("embed_dropout", write=lambda cfg: cfg.dropout),
        hfmap.Field("attention_dropout", "attn_dropout", 0.0),
        hfmap.Field("window_size", "sliding_window", 256, read=lambda w, hc: min(w, hc.get("max_position_embeddings",
                                                                                         2048)), write=_window),
        hfmap.Field("attention_types", "attn_pattern", None, read=_expand, write=_attention_types),
        hfmap.Field("attention_layers", write=lambda cfg: ["local" if x else "global" for x in cfg.local_layers]),
        hfmap.Field("tie_word_embeddings", "tie_embeddings", True),
    ),
    # GPT-Neo's attention: no q/k/v biases and unscaled scores (the differences from GPT-3's described above)
    fixed={"norm_position": "pre", "embed_scale": False, "pos_emb": "learned", "norm": "layernorm",
           "use_bias": True, "qkv_bias": False, "attn_scale": 1.0, "attn_softcap": None, "final_norm": True,
           "post_norms": False, "final_logit_softcap": None},
    export_checks=(hfmap.plain_attention, hfmap.default_head_dim),
    prefix="transformer.",
    rules=(
        ("embed/tokens", "transformer.wte.weight", "copy"),
        ("embed/positions", "transformer.wpe.weight", "copy"),
        ("layers/norm1/scale", _L + "ln_1.weight", "copy"), ("layers/norm1/bias", _L + "ln_1.bias", "copy"),
        ("layers/norm2/scale", _L + "ln_2.weight", "copy"), ("layers/norm2/bias", _L + "ln_2.bias", "copy"),
        *((f"layers/attn/{x}/w", _A + f"{x}_proj.weight", "linear1") for x in "qkv"),
        ("layers/attn/o/w", _A + "out_proj.weight", "linear2"), ("layers/attn/o/b", _A + "out_proj.bias", "copy"),
        ("layers/mlp/wi/w", _L + "mlp.c_fc.weight", "linear1"), ("layers/mlp/wi/b", _L + "mlp.c_fc.bias", "copy"),
        ("layers/mlp/wo/w", _L + "mlp.c_proj.weight", "linear1"), ("layers/mlp/wo/b", _L + "mlp.c_proj.bias", "copy"),
        ("final_norm/scale", "transformer.ln_f.weight", "copy"), ("final_norm/bias", "transformer.ln_f.bias", "copy"),
        ("lm_head/w", "lm_head.weight", "linear1"),  # untied only
    ),
    ignored=("attn.attention.bias", "attn.attention.masked_bias", "lm_head.weight"),  # mask buffers; tied head
)
