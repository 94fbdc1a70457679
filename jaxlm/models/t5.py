"""T5 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer"): an encoder-decoder with relative position bias.

What differs from the 2017 Transformer (:mod:`jaxlm.models.transformer`):

- **no absolute positions**: each stack has one table of relative position biases ``[buckets, heads]``
  (:mod:`jaxlm.nn.relative`; 32 buckets, log-spaced up to distance 128), bidirectional in the encoder and
  causal in the decoder, computed once per forward pass and added to the attention scores of every layer
  of that stack (cross-attention gets none);
- **pre-norm with RMSNorm** (T5's "layer norm": no mean subtraction, no bias), a final norm after each stack;
- **no biases anywhere**, and **no 1/sqrt(d_k) in attention**: T5 folds it into the query initialisation
  (q ~ N(0, (d_model d_kv)^-1/2), k/v ~ N(0, d_model^-1/2), o ~ N(0, (H d_kv)^-1/2), embeddings ~ N(0, 1));
- FFN: ReLU (T5 v1.0, ``activation="relu"``) or gated GELU (T5 v1.1, ``activation="geglu_tanh"``, the tanh
  GELU of the released code);
- output head tied to the shared embedding, with the decoder output multiplied by d_model^-0.5 first (the
  released code's rescaling, ``head_rescale``); T5 v1.1 unties the head and drops the rescaling;
- dropout 0.1 on embeddings, attention probabilities, FFN hidden units and every sub-layer output.

Presets: ``t5-small`` 60,506,624, ``t5-base`` 222,903,552, ``t5-v1_1-small`` 76,961,152 (untied head), equal
to transformers' ``T5ForConditionalGeneration`` (tests/models/test_t5.py).

Deviations:
- ``bos_id`` (the decoder start token) and ``eos_id`` default to jaxlm's tokenizer ids (<bos> = 1,
  <eos> = 2, as for the Transformer); T5's SentencePiece vocabulary starts decoding from <pad> = 0 and ends
  at </s> = 1, and Hugging Face import sets both from ``config.json`` (``decoder_start_token_id``,
  ``eos_token_id``).
- no dropout after each stack's final norm (the released code has one there); the other dropouts are T5's.
- ``max_len`` (512) only bounds inputs; relative positions themselves have no length limit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxlm import params as P
from jaxlm import sharding
from jaxlm.config import ConfigError
from jaxlm.models import decoder, hfmap
from jaxlm.models.base import ModelConfig, Preset
from jaxlm.nn import attention, blocks, embed, ffn, masks, norms, relative, stack


@dataclass(frozen=True, kw_only=True)
class Config(ModelConfig):
    family: ClassVar[str] = "t5"
    unused: ClassVar[tuple[str, ...]] = ("rope_theta", "pos_emb", "embed_scale", "norm", "norm_position",
                                         "use_bias", "final_norm", "init", "scale_residual_init")
    vocab_size: int = 32128
    max_len: int = 512
    d_model: int = 512
    n_heads: int = 8
    d_head: int | None = 64  # T5's d_kv
    n_layers: int = 6  # encoder layers
    n_dec_layers: int | None = None  # None = n_layers
    d_ff: int = 2048
    ffn_dropout: float = 0.1  # (dropout and attn_dropout: the base's 0.1, as in T5)
    activation: str = "relu"  # v1.0; v1.1: "geglu_tanh"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    pos_emb: str = "none"
    use_bias: bool = False
    init_std: float = 1.0  # T5's initializer_factor: multiplies every init std below
    head_rescale: bool = True  # decoder output * d_model^-0.5 before the head (v1.0); v1.1: False
    rel_buckets: int = 32
    rel_max_distance: int = 128
    bos_id: int = 1  # decoder start token (see Deviations)
    eos_id: int = 2

    @property
    def dec_layers(self) -> int:
        return self.n_layers if self.n_dec_layers is None else self.n_dec_layers

    @property
    def attn_cfg(self) -> attention.AttentionConfig:
        # no 1/sqrt(d_k): T5 folds it into the query initialisation
        return dataclasses.replace(super().attn_cfg, scale=1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        relative.check(self.rel_buckets, self.rel_max_distance, "t5.Config")
        if self.n_dec_layers is not None and (not isinstance(self.n_dec_layers, int) or self.n_dec_layers <= 0):
            raise ConfigError(f"t5.Config.n_dec_layers={self.n_dec_layers!r} must be a positive integer (or None "
                              f"for n_layers).")


_CITE = "Raffel et al. 2020, Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer"
KIND = "encoder-decoder"
TASKS = ("seq2seq", "span_corruption")

PRESETS: dict[str, Preset] = {
    "t5-small": Preset(Config(), _CITE, 60_506_624, "paper: ~60M"),
    "t5-base": Preset(Config(d_model=768, n_heads=12, n_layers=12, d_ff=3072), _CITE, 222_903_552, "paper: ~220M"),
    "t5-v1_1-small": Preset(Config(n_heads=6, n_layers=8, d_ff=1024, activation="geglu_tanh", tie_embeddings=False,
                                   head_rescale=False), "T5 v1.1 (google-research/text-to-text-transfer-"
                            "transformer, released_checkpoints.md)", 76_961_152, "gated GELU, untied head"),
    "t5-tiny": Preset(Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, d_head=16, n_layers=2, d_ff=128,
                             rel_buckets=8, rel_max_distance=32), "test-sized T5", 197_440),
}


# ------------------------------------------------------------------------------------------------------------
# parameters
def _t5_init(block: dict, cfg: Config) -> dict:
    """The block's parameters with T5's initialisation (Mesh TensorFlow's, which the released code uses):
    the 1/sqrt(d_k) of attention lives in the query's init."""
    D, H, K, F, f = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff, cfg.init_std
    std = {"q": (D * K) ** -0.5, "k": D**-0.5, "v": D**-0.5, "o": (H * K) ** -0.5,
           "wi": D**-0.5, "wi_0": D**-0.5, "wi_1": D**-0.5, "wo": F**-0.5}
    flat = P.flatten(block)
    for path, p in flat.items():
        parts = path.split("/")
        if parts[-1] == "w" and parts[-2] in std:
            flat[path] = dataclasses.replace(p, init=P.normal(f * std[parts[-2]]))
    return P.unflatten(flat)


def _stack_spec(cfg: Config, n: int, cross: bool) -> dict:
    return {"layers": stack.spec(_t5_init(blocks.spec(cfg, cross=cross), cfg), n),
            "final_norm": norms.spec(cfg),
            "rel_bias": relative.spec(cfg.rel_buckets, cfg.n_heads, std=cfg.init_std * cfg.d_model**-0.5,
                                      dtype=cfg.param_dtype)}


def spec(cfg: Config) -> dict:
    """``embed/tokens`` [V, D] (shared by encoder, decoder and a tied head), ``encoder`` and ``decoder``
    (``layers``, ``final_norm``, ``rel_bias/table`` [buckets, H]; the decoder's blocks with cross-attention)
    and ``lm_head`` [D, V] when untied."""
    out = {"embed": embed.spec(cfg.vocab_size, cfg.d_model, std=cfg.init_std, dtype=cfg.param_dtype),
           "encoder": _stack_spec(cfg, cfg.n_layers, cross=False),
           "decoder": _stack_spec(cfg, cfg.dec_layers, cross=True)}
    if not cfg.tie_embeddings:
        out["lm_head"] = embed.unembed_spec(cfg.d_model, cfg.vocab_size, std=cfg.init_std, dtype=cfg.param_dtype)
    return out


def init(key: jax.Array, cfg: Config, mesh=None) -> dict:
    return sharding.init(key, spec(cfg), mesh)


def _embed(params: dict, tokens: jax.Array, cfg: Config, key) -> jax.Array:
    x = embed.apply(params["embed"], tokens, jnp.dtype(cfg.dtype))  # [B, T, D]; no positions, no scaling
    x = ffn.dropout(x, cfg.dropout, key)
    return sharding.constrain(x, ("batch", "seq", "act_embed"))


def position_bias(p: dict, q_positions: jax.Array, k_positions: jax.Array, cfg: Config, *,
                  bidirectional: bool) -> jax.Array:
    """One stack's relative position bias ``[B|1, H, T, S]`` from its ``rel_bias`` table."""
    return relative.bias(p, q_positions, k_positions, bidirectional=bidirectional, num_buckets=cfg.rel_buckets,
                         max_distance=cfg.rel_max_distance)


# ------------------------------------------------------------------------------------------------------------
# the model
def encode(params: dict, src: jax.Array, cfg: Config, *, src_valid=None, key=None, return_aux: bool = False,
           return_weights: bool = False, block_fn=blocks.apply):
    """src [B, S] -> encoder output [B, S, D] (``(out, aux)`` with aux ``weights`` when asked).
    ``src_valid`` [B, S] marks real (non-pad) source tokens; None = all real."""
    embed.check_tokens(src, cfg.vocab_size, "source token ids")
    B, S = src.shape
    decoder.check_length(S, cfg, "source")
    k_emb, k_layers = (None, None) if key is None else jax.random.split(key)
    x = _embed(params, src, cfg, k_emb)
    pos = jnp.arange(S)[None]
    bias = position_bias(params["encoder"]["rel_bias"], pos, pos, cfg, bidirectional=True)  # [1, H, S, S]
    x, ys = decoder.run_layers(params["encoder"]["layers"], x, cfg, mask=masks.make_mask(S, kv_valid=src_valid),
                               key=k_layers, return_weights=return_weights, block_fn=block_fn, bias=bias)
    x = norms.apply(params["encoder"]["final_norm"], x, cfg)
    if not (return_aux or return_weights):
        return x
    return x, {k: ys[k] for k in ("weights",) if k in ys}


def init_cache(cfg: Config, batch: int, max_len: int, dtype=None) -> dict:
    """Zeroed decoder self-attention cache ``{"self": {"k","v": [L, B, S_max, G, K]}}``."""
    return decoder.init_cache(cfg, batch, max_len, dtype, n_layers=cfg.dec_layers)


def cross_cache(params: dict, enc: jax.Array, cfg: Config) -> dict:
    """Cross-attention keys/values of every decoder layer, computed once: ``{"k","v": [L, B, S, G, K]}``."""
    k, v = jax.vmap(lambda p: attention.project_kv(p, enc, cfg))(params["decoder"]["layers"]["cross"])
    return {"k": k, "v": v}


def decode(params: dict, tgt: jax.Array, enc: jax.Array | None, cfg: Config, *, src_valid=None,
           positions=None, kv_valid=None, cache=None, cache_index=None, layers=None, key=None,
           return_aux: bool = False, return_weights: bool = False, return_hidden: bool = False,
           block_fn=blocks.apply):
    """Decoder: tgt [B, T] (starting with the decoder start token ``bos_id``) attending causally to itself
    and to ``enc`` [B, S, D] -> logits [B, T, V] float32. Keywords and return convention as
    :func:`jaxlm.models.decoder.decode`; incremental decoding with ``cache`` = ``{"self": ..., "cross":
    cross_cache(...)}`` and ``cache_index`` (``enc`` may then be None). ``positions`` [B, T] default to the
    token slots (they only feed the relative bias)."""
    embed.check_tokens(tgt, cfg.vocab_size, "target token ids")
    B, T = tgt.shape
    if cache is None:
        decoder.check_length(T, cfg, "target")
    src_len = enc.shape[1] if enc is not None else decoder.cache_slots({"self": cache["cross"]})
    enc_mask = None if src_valid is None else masks.make_mask(T, src_len, kv_valid=src_valid)
    slots, mask = decoder.causal_mask(B, T, kv_valid=kv_valid, cache=cache, cache_index=cache_index)
    pos = slots if positions is None else positions
    k_pos = pos if cache is None else jnp.arange(decoder.cache_slots(cache))[None]  # keys sit at their slots
    bias = position_bias(params["decoder"]["rel_bias"], pos, k_pos, cfg, bidirectional=False)  # [B, H, T, S]
    k_emb, k_layers = (None, None) if key is None else jax.random.split(key)
    x = _embed(params, tgt, cfg, k_emb)
    x, ys = decoder.run_layers(params["decoder"]["layers"] if layers is None else layers, x, cfg, mask=mask,
                               enc=enc, enc_mask=enc_mask, cache=cache, cache_index=cache_index, key=k_layers,
                               return_weights=return_weights, block_fn=block_fn, bias=bias)
    x = norms.apply(params["decoder"]["final_norm"], x, cfg)
    h = x * cfg.d_model**-0.5 if cfg.head_rescale else x
    out = decoder.logits(params, h, cfg)
    if not (return_aux or cache is not None or return_weights or return_hidden):
        return out
    aux = {k: ys[k] for k in ("cache", "weights", "cross_weights") if k in ys}
    if return_hidden:
        aux["hidden"] = x
    return out, aux


def apply(params: dict, src: jax.Array, tgt: jax.Array, cfg: Config, *, src_valid=None, tgt_valid=None,
          key=None, block_fn=blocks.apply) -> jax.Array:
    """Teacher-forced forward pass: src [B, S], tgt (decoder input, shifted right) [B, T] -> logits [B, T, V]."""
    k_enc, k_dec = (None, None) if key is None else jax.random.split(key)
    enc = encode(params, src, cfg, src_valid=src_valid, key=k_enc, block_fn=block_fn)
    return decode(params, tgt, enc, cfg, src_valid=src_valid, kv_valid=tgt_valid, key=k_dec, block_fn=block_fn)


# ------------------------------------------------------------------------------------------------------------
# Hugging Face mapping (T5ForConditionalGeneration)
# feed_forward_proj values jaxlm runs: transformers maps "gated-gelu" to the tanh GELU ("gelu_new")
FEED_FORWARD = {"relu": "relu", "gated-gelu": "geglu_tanh", "gelu": "gelu", "gated-silu": "swiglu"}


def _feed_forward_proj(hc: dict) -> str | None:
    v = hc.get("feed_forward_proj", "relu")
    if v in FEED_FORWARD:
        return None
    return (f"T5 config.json feed_forward_proj={v!r} is not supported; allowed values: "
            f"{', '.join(repr(k) for k in FEED_FORWARD)}")


def _read_config(hc: dict, names: set[str]) -> dict:
    # an untied head is a separate lm_head tensor (T5 v1.1); transformers >= 5 writes tie_word_embeddings=True
    # for every T5 and keeps the v1.1 "no rescaling" in scale_decoder_outputs
    out = {}
    if names:
        out["tie_embeddings"] = "lm_head.weight" not in names
    return out


def _rescale(v, hc: dict) -> bool:
    return (hc.get("tie_word_embeddings", True) is not False) if v is None else bool(v)


def _dec_layers(v, hc: dict):
    return None if v is None or v == hc.get("num_layers") else v


def _rules() -> tuple:
    rules = [("embed/tokens", "shared.weight", "copy"), ("lm_head/w", "lm_head.weight", "linear1")]
    for side, n_attn in (("encoder", 1), ("decoder", 2)):
        b = f"{side}.block.{{i}}.layer"
        attn = [("attn", f"{b}.0.SelfAttention", "norm1", f"{b}.0.layer_norm")]
        if side == "decoder":
            attn.append(("cross", f"{b}.1.EncDecAttention", "norm_cross", f"{b}.1.layer_norm"))
        for ours, hf, norm, hf_norm in attn:
            rules += [(f"{side}/layers/{ours}/{x}/w", f"{hf}.{x}.weight", "linear1") for x in "qkv"]
            rules += [(f"{side}/layers/{ours}/o/w", f"{hf}.o.weight", "linear2"),
                      (f"{side}/layers/{norm}/scale", f"{hf_norm}.weight", "copy")]
        f = f"{b}.{n_attn}"
        rules += [(f"{side}/layers/mlp/{w}/w", f"{f}.DenseReluDense.{w}.weight", "linear1")
                  for w in ("wi", "wi_0", "wi_1", "wo")]
        rules += [(f"{side}/layers/norm2/scale", f"{f}.layer_norm.weight", "copy"),
                  (f"{side}/final_norm/scale", f"{side}.final_layer_norm.weight", "copy"),
                  (f"{side}/rel_bias/table", f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                   "copy")]
    return tuple(rules)


HF = hfmap.HFMapping(
    model_types={"t5": "T5"},
    architectures={"t5": "T5ForConditionalGeneration"},
    fields=(hfmap.Field("vocab_size", "vocab_size"),
            hfmap.Field("d_model", "d_model"),
            hfmap.Field("d_kv", "d_head"),
            hfmap.Field("d_ff", "d_ff"),
            hfmap.Field("num_layers", "n_layers"),
            hfmap.Field("num_decoder_layers", "n_dec_layers", None, read=_dec_layers, write=lambda c: c.dec_layers),
            hfmap.Field("num_heads", "n_heads"),
            hfmap.Field("relative_attention_num_buckets", "rel_buckets", 32),
            hfmap.Field("relative_attention_max_distance", "rel_max_distance", 128),
            hfmap.Field("dropout_rate", "dropout", 0.1),
            hfmap.Field("dropout_rate", "attn_dropout", 0.1, export=False),
            hfmap.Field("dropout_rate", "ffn_dropout", 0.1, export=False),
            hfmap.Field("layer_norm_epsilon", "norm_eps", 1e-6),
            hfmap.Field("initializer_factor", "init_std", 1.0),
            hfmap.Field("feed_forward_proj", "activation", "relu", values=FEED_FORWARD),
            hfmap.Field("tie_word_embeddings", "tie_embeddings", True),
            hfmap.Field("scale_decoder_outputs", "head_rescale", None, read=_rescale),
            hfmap.Field("n_positions", "max_len", 512),
            hfmap.Field("decoder_start_token_id", "bos_id", 0),
            hfmap.Field("eos_token_id", "eos_id", 1)),
    constants={"is_encoder_decoder": True},
    checks=(_feed_forward_proj,),
    drop=("dense_act_fn", "is_gated_act"),
    read_config=_read_config,
    prefix="",
    rules=_rules(),
    ignored=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "EncDecAttention.relative_attention_bias"),
)
