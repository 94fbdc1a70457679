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

from jaxlm import sharding
from jaxlm.config import ConfigError
from jaxlm.models import decoder
from jaxlm.models.base import ModelConfig, Preset
from jaxlm.nn import attention, blocks, embed, masks, norms


@dataclass(frozen=True, kw_only=True)
class Config(ModelConfig):
    family: ClassVar[str] = "transformer"
    unused: ClassVar[tuple[str, ...]] = ("rope_theta",)
    vocab_size: int = 37000
    max_len: int = 1024
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6  # encoder layers
    n_dec_layers: int | None = None  # None = n_layers
    d_ff: int = 2048
    attn_dropout: float = 0.0
    activation: str = "relu"
    norm_eps: float = 1e-6
    norm_position: str = "post"
    pos_emb: str = "sinusoidal"
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
    """``embed`` (shared by source, target and output), ``encoder``/``decoder`` stacks (the decoder's blocks
    with cross-attention), final norms when configured, and an untied head when configured."""
    return {"embed": decoder.embed_spec(cfg),
            "encoder": decoder.stack_spec(cfg, cfg.n_layers),
            "decoder": decoder.stack_spec(cfg, cfg.dec_layers, cross=True),
            **decoder.head_spec(cfg)}


def init(key: jax.Array, cfg: Config, mesh=None) -> dict:
    return sharding.init(key, spec(cfg), mesh)


def encode(params: dict, src: jax.Array, cfg: Config, *, src_valid=None, key=None, return_aux: bool = False,
           return_weights: bool = False, block_fn=blocks.apply):
    """src [B, S] -> encoder output [B, S, D] (``(out, aux)`` with aux ``weights`` when asked).
    ``src_valid`` [B, S] marks real (non-pad) source tokens; None = all real."""
    embed.check_tokens(src, cfg.vocab_size, "source token ids")
    B, S = src.shape
    decoder.check_length(S, cfg, "source")
    k_emb, k_layers = (None, None) if key is None else jax.random.split(key)
    pos = jnp.broadcast_to(jnp.arange(S)[None], (B, S))
    x = decoder.embed(params["embed"], src, cfg, pos, k_emb)
    x, ys = decoder.run_layers(params["encoder"]["layers"], x, cfg, mask=masks.make_mask(S, kv_valid=src_valid),
                               key=k_layers, return_weights=return_weights, block_fn=block_fn)
    if cfg.final_norm:
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
    """Decoder: tgt [B, T] attending causally to itself and to ``enc`` [B, S, D] -> logits [B, T, V]
    (:func:`jaxlm.models.decoder.decode` over the decoder stack; same keywords and return convention).

    Incremental decoding: ``cache`` = ``{"self": ..., "cross": cross_cache(...)}`` and ``cache_index``
    (``enc`` may then be None).
    """
    src_len = enc.shape[1] if enc is not None else decoder.cache_slots({"self": cache["cross"]})
    enc_mask = None if src_valid is None else masks.make_mask(tgt.shape[1], src_len, kv_valid=src_valid)
    return decoder.decode(params, params["decoder"], tgt, cfg, enc=enc, enc_mask=enc_mask, positions=positions,
                          kv_valid=kv_valid, cache=cache, cache_index=cache_index, layers=layers, key=key,
                          return_aux=return_aux, return_weights=return_weights, return_hidden=return_hidden,
                          block_fn=block_fn, role="target")


def apply(params: dict, src: jax.Array, tgt: jax.Array, cfg: Config, *, src_valid=None, tgt_valid=None,
          key=None, block_fn=blocks.apply) -> jax.Array:
    """Teacher-forced forward pass: src [B, S], tgt (decoder input, shifted right) [B, T] -> logits [B, T, V]."""
    k_enc, k_dec = (None, None) if key is None else jax.random.split(key)
    enc = encode(params, src, cfg, src_valid=src_valid, key=k_enc, block_fn=block_fn)
    return decode(params, tgt, enc, cfg, src_valid=src_valid, kv_valid=tgt_valid, key=k_dec, block_fn=block_fn)


# ------------------------------------------------------------------------------------------------------------
# Hugging Face mapping
HF = None
