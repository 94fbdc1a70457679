"""The Transformer of Vaswani et al. (2017), "Attention Is All You Need": an encoder-decoder.

Paper-faithful defaults: post-norm residual blocks (``LayerNorm(x + Dropout(Sublayer(x)))``), sinusoidal
positional encodings added to embeddings scaled by sqrt(d_model), ReLU FFN, P_drop = 0.1 on every sub-layer
output and on the embedding sums, and one weight matrix shared by the source embedding, the target
embedding and the pre-softmax projection (a shared source/target BPE vocabulary, 37,000 tokens for WMT
En-De). Label smoothing (eps = 0.1) lives in the loss (:mod:`jaxlm.losses`).

Parameter count: ``transformer-base`` has 63,082,496 parameters with a 37,000-token vocabulary
(18,944,000 in the shared embedding, 18,914,304 in the encoder, 25,224,192 in the decoder). The paper's
Table 3 says 65M; the 2.9 % gap is the vocabulary: the paper counted with its exact BPE vocabulary, whose
size it gives only as "about 37000", and tensor2tensor's implementation also padded vocabularies. Each
extra 1,000 tokens adds 512,000 parameters; 65M corresponds to ~40,700 tokens.

Deviations:
- ``init="xavier"`` (Glorot-uniform) as in the reference tensor2tensor code; the paper does not state it.
- no attention-probability dropout by default (``attn_dropout=0.0``): the paper describes residual dropout
  only; tensor2tensor later added it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxlm import params as P
from jaxlm import sharding
from jaxlm.config import ConfigError
from jaxlm.models import decoder as decoder_lm
from jaxlm.models.base import ModelConfig, Preset
from jaxlm.nn import attention, blocks, embed, ffn, masks, norms, positions, stack


@dataclass(frozen=True, kw_only=True)
class Config(ModelConfig):
    family: ClassVar[str] = "transformer"
    vocab_size: int = 37000
    max_len: int = 1024
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6  # encoder layers
    n_dec_layers: int | None = None  # None = n_layers
    d_ff: int = 2048
    dropout: float = 0.1
    attn_dropout: float = 0.0
    activation: str = "relu"
    norm: str = "layernorm"
    norm_eps: float = 1e-6
    norm_position: str = "post"
    pos_emb: str = "sinusoidal"
    tie_embeddings: bool = True
    embed_scale: bool = True
    final_norm: bool = False
    init: str = "xavier"
    bos_id: int = 1
    eos_id: int = 2

    @property
    def dec_layers(self) -> int:
        return self.n_layers if self.n_dec_layers is None else self.n_dec_layers

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pos_emb not in ("sinusoidal", "learned"):
            raise ConfigError(f"transformer.Config.pos_emb={self.pos_emb!r}: use 'sinusoidal' or 'learned'.")
        if self.n_dec_layers is not None and self.n_dec_layers <= 0:
            raise ConfigError(f"transformer.Config.n_dec_layers={self.n_dec_layers} must be positive.")


_CITE = "Vaswani et al. 2017, Attention Is All You Need"
KIND = "encoder-decoder"
TASKS = ("seq2seq",)

PRESETS: dict[str, Preset] = {
    "transformer-base": Preset(Config(), _CITE, 63_082_496, "paper: 65M (Table 3)"),
    "transformer-big": Preset(Config(d_model=1024, n_heads=16, d_ff=4096, dropout=0.3), _CITE, 214_245_376,
                              "paper: 213M (Table 3)"),
    "transformer-tiny": Preset(Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, n_layers=2, d_ff=256),
                               "test-sized Transformer", 266_240),
}


def spec(cfg: Config) -> dict:
    """``embed`` (shared), ``encoder/layers``, ``decoder/layers`` (with cross-attention), optional final norms
    and untied head."""
    e = embed.spec(cfg)
    if cfg.pos_emb == "learned":
        e.update(positions.learned_spec(cfg))
    p = {"embed": e,
         "encoder": {"layers": stack.spec(blocks.spec(cfg), cfg.n_layers)},
         "decoder": {"layers": stack.spec(blocks.spec(cfg, cross=True), cfg.dec_layers)}}
    if cfg.final_norm:
        p["encoder"]["final_norm"] = norms.spec(cfg)
        p["decoder"]["final_norm"] = norms.spec(cfg)
    if not cfg.tie_embeddings:
        p["lm_head"] = embed.unembed_spec(cfg)
    return p


def init(key: jax.Array, cfg: Config, mesh=None) -> dict:
    return P.init(key, spec(cfg), mesh)


def _embed(params, tokens, cfg, pos, key):
    dt = jnp.dtype(cfg.dtype)
    x = embed.apply(params["embed"], tokens, dt, scale=cfg.d_model**0.5 if cfg.embed_scale else None)
    if cfg.pos_emb == "sinusoidal":
        x = x + positions.sinusoidal(pos, cfg.d_model, dt)
    else:
        x = x + positions.learned(params["embed"], pos, dt)
    return sharding.constrain(ffn.dropout(x, cfg.dropout, key), ("batch", "seq", "act_embed"))


def _split(key, n):
    return (None,) * n if key is None else tuple(jax.random.split(key, n))


def encode(params: dict, src: jax.Array, cfg: Config, *, src_valid=None, key=None,
           return_weights: bool = False, block_fn=blocks.apply):
    """src [B, S] -> encoder output [B, S, D] (and aux with ``weights`` when asked).
    ``src_valid`` [B, S] marks real (non-pad) source tokens; None = all real."""
    embed.check_tokens(src, cfg.vocab_size, "source token ids")
    B, S = src.shape
    if S > cfg.max_len:
        raise ValueError(f"source length {S} exceeds max_len={cfg.max_len}: truncate the source to "
                         f"{cfg.max_len} tokens (or build the model with a larger max_len).")
    k_emb, k_layers = _split(key, 2)
    pos = jnp.broadcast_to(jnp.arange(S)[None], (B, S))
    x = _embed(params, src, cfg, pos, k_emb)
    mask = masks.make_mask(S, kv_valid=src_valid)
    keys = None if key is None else jax.random.split(k_layers, cfg.n_layers)

    def body(p, h, k):
        h, aux = block_fn(p, h, cfg, mask=mask, key=k, return_weights=return_weights)
        return h, aux.get("weights") if return_weights else {}

    x, ws = stack.apply(body, params["encoder"]["layers"], x, keys, scan=cfg.scan_layers, remat=cfg.remat)
    if cfg.final_norm:
        x = norms.apply(params["encoder"]["final_norm"], x, cfg)
    return (x, {"weights": ws}) if return_weights else x


def init_cache(cfg: Config, batch: int, max_len: int, dtype=None) -> dict:
    """Zeroed decoder self-attention cache ``{"self": {"k","v": [L, B, S_max, G, K]}}``."""
    dtype = dtype or cfg.dtype
    shape = (cfg.dec_layers, batch, max_len, cfg.kv_heads, cfg.head_dim)
    return {"self": {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}}


def cross_cache(params: dict, enc: jax.Array, cfg: Config) -> dict:
    """Cross-attention keys/values of every decoder layer, computed once: ``{"k","v": [L, B, S, G, K]}``."""
    k, v = jax.vmap(lambda p: attention.project_kv(p, enc, cfg))(params["decoder"]["layers"]["cross"])
    return {"k": k, "v": v}


def decode(params: dict, tgt: jax.Array, enc: jax.Array | None, cfg: Config, *, src_valid=None,
           positions_=None, kv_valid=None, cache=None, cache_index=None, key=None,
           return_aux: bool = False, return_weights: bool = False, block_fn=blocks.apply):
    """Decoder: tgt [B, T] attending causally to itself and to ``enc`` [B, S, D] -> logits [B, T, V].

    Incremental decoding: ``cache`` = ``{"self": ..., "cross": cross_cache(...)}`` and ``cache_index``
    (``enc`` may then be None). Returns logits, or (logits, aux) with the updated ``cache`` / weights.
    """
    embed.check_tokens(tgt, cfg.vocab_size, "target token ids")
    B, T = tgt.shape
    k_emb, k_layers = _split(key, 2)
    if cache is None:
        if T > cfg.max_len:
            raise ValueError(f"target length {T} exceeds max_len={cfg.max_len}: truncate the target to "
                             f"{cfg.max_len} tokens (or build the model with a larger max_len).")
        slots = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
        mask = masks.make_mask(T, causal=True, kv_valid=kv_valid)
    else:
        S_max = cache["self"]["k"].shape[2]
        decoder_lm._check_cache_room(cache_index, T, S_max)
        slots = jnp.broadcast_to((cache_index + jnp.arange(T))[None], (B, T))
        mask = masks.make_mask(T, S_max, causal=True, q_positions=slots, kv_positions=jnp.arange(S_max)[None],
                               kv_valid=kv_valid)
    pos = slots if positions_ is None else positions_
    x = _embed(params, tgt, cfg, pos, k_emb)
    src_len = enc.shape[1] if enc is not None else cache["cross"]["k"].shape[2]
    enc_mask = None if src_valid is None else masks.make_mask(T, src_len, kv_valid=src_valid)
    keys = None if key is None else jax.random.split(k_layers, cfg.dec_layers)
    layer_cache = None if cache is None else (cache["self"], cache["cross"])

    def body(p, h, xs):
        k, lc = xs
        c = None if lc is None else {"self": lc[0], "cross": lc[1]}
        h, aux = block_fn(p, h, cfg, mask=mask, enc=enc, enc_mask=enc_mask, cache=c, cache_index=cache_index,
                          key=k, return_weights=return_weights)
        out = {}
        if c is not None:
            out["cache"] = aux["cache"]["self"]
        if return_weights:
            out["weights"], out["cross_weights"] = aux["weights"], aux["cross_weights"]
        return h, out

    x, ys = stack.apply(body, params["decoder"]["layers"], x, (keys, layer_cache),
                        scan=cfg.scan_layers, remat=cfg.remat)
    if cfg.final_norm:
        x = norms.apply(params["decoder"]["final_norm"], x, cfg)
    logits = (embed.attend(params["embed"], x) if cfg.tie_embeddings
              else embed.unembed(params["lm_head"], x)).astype(jnp.float32)
    if not (return_aux or cache is not None):
        return logits
    aux = {}
    if cache is not None:
        aux["cache"] = {"self": ys["cache"], "cross": cache["cross"]}
    if return_weights:
        aux["weights"], aux["cross_weights"] = ys["weights"], ys["cross_weights"]
    return logits, aux


def apply(params: dict, src: jax.Array, tgt: jax.Array, cfg: Config, *, src_valid=None, tgt_valid=None,
          key=None, block_fn=blocks.apply) -> jax.Array:
    """Teacher-forced forward pass: src [B, S], tgt (decoder input, shifted right) [B, T] -> logits [B, T, V]."""
    k_enc, k_dec = _split(key, 2)
    enc = encode(params, src, cfg, src_valid=src_valid, key=k_enc, block_fn=block_fn)
    return decode(params, tgt, enc, cfg, src_valid=src_valid, kv_valid=tgt_valid, key=k_dec, block_fn=block_fn)


# ------------------------------------------------------------------------------------------------------------
# Hugging Face mapping
HF = None
