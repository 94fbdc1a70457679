"""BERT (Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding").

Embeddings = token + learned position + token-type, then LayerNorm (eps 1e-12) and dropout; post-norm
encoder blocks with exact-GELU FFN; a pooler (dense + tanh on the [CLS] position). Task heads are
optional and named in ``cfg.heads``:

- ``"mlm"``: dense + GELU + LayerNorm, then the tied token embedding with an output bias -> [B, T, V];
- ``"classifier"``: dropout + dense on the pooled output -> [B, num_labels];
- ``"span"``: dense to start/end logits per token (SQuAD-style extractive QA) -> 2 x [B, T].

``pos_emb="none"`` drops the position table (a bag-of-words encoder, for ablations); the default is the
paper's learned table.

Deviations:
- no next-sentence-prediction head (RoBERTa, Liu et al. 2019, found it unnecessary); MLM only.
- MLM logits are computed at every position; the loss masks all but the selected 15 %.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxlm import params as P
from jaxlm import sharding
from jaxlm.config import ConfigError, check_choice
from jaxlm.models import decoder, hfmap
from jaxlm.models.base import ModelConfig, Preset
from jaxlm.nn import blocks, embed, ffn, linear, masks, norms, stack
from jaxlm.params import Param, zeros

HEADS = ("mlm", "classifier", "span")


@dataclass(frozen=True, kw_only=True)
class Config(ModelConfig):
    family: ClassVar[str] = "bert"
    unused: ClassVar[tuple[str, ...]] = ("rope_theta", "tie_embeddings", "embed_scale", "final_norm")
    vocab_size: int = 30522
    max_len: int = 512
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    d_ff: int = 3072
    norm_eps: float = 1e-12
    norm_position: str = "post"
    final_norm: bool = False
    type_vocab_size: int = 2
    pooler: bool = True
    heads: tuple[str, ...] = field(default=())
    num_labels: int = 2
    classifier_dropout: float | None = None  # None = dropout

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "heads", tuple(self.heads))
        if self.pos_emb not in ("learned", "none"):
            raise ConfigError(f"bert.Config.pos_emb={self.pos_emb!r}: BERT adds a learned position table "
                              f"('learned', the paper's) or none ('none'); rotary/ALiBi/sinusoidal are not wired "
                              f"into this family.")
        if self.type_vocab_size < 1:
            raise ConfigError(f"bert.Config.type_vocab_size={self.type_vocab_size} must be >= 1.")
        for h in self.heads:
            check_choice("bert.Config.heads entry", h, HEADS)
        if "classifier" in self.heads and not self.pooler:
            raise ConfigError("bert.Config: the classifier head reads the pooled output; set pooler=True.")
        if self.num_labels < 1:
            raise ConfigError(f"bert.Config.num_labels={self.num_labels} must be >= 1.")


_CITE = "Devlin et al. 2019, BERT"
KIND = "encoder"
TASKS = ("mlm", "classification", "span")

PRESETS: dict[str, Preset] = {
    "bert-base": Preset(Config(), _CITE, 109_482_240, "BertModel with pooler, no task head"),
    "bert-large": Preset(Config(d_model=1024, n_heads=16, n_layers=24, d_ff=4096), _CITE, 335_141_888),
    "bert-tiny": Preset(Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, n_layers=2, d_ff=256),
                        "test-sized BERT", 145_344),
}


def for_task(cfg: Config, task: str) -> Config:
    """``cfg`` with the one head that training ``task`` needs (mlm, classifier or span)."""
    head = {"mlm": "mlm", "classification": "classifier", "span": "span"}[task]
    return cfg if tuple(cfg.heads) == (head,) else cfg.replace(heads=(head,))


def spec(cfg: Config) -> dict:
    """``embed/{tokens, positions, token_types}``, ``embed_norm``, ``layers`` and the pooler and heads."""
    dt = jnp.dtype(cfg.param_dtype)
    e = decoder.embed_spec(cfg)
    e["token_types"] = Param((cfg.type_vocab_size, cfg.d_model), (None, "embed"), P.normal(cfg.init_std), dt)
    p = {"embed": e, "embed_norm": norms.spec(cfg), "layers": stack.spec(blocks.spec(cfg), cfg.n_layers)}
    D = cfg.d_model
    if cfg.pooler:
        p["pooler"] = linear.spec(cfg, (D,), (D,), ("embed",), ("embed",), bias=True)
    if "mlm" in cfg.heads:
        p["mlm"] = {"transform": linear.spec(cfg, (D,), (D,), ("embed",), ("embed",), bias=True),
                    "norm": norms.spec(cfg), "bias": Param((cfg.vocab_size,), ("vocab",), zeros, dt)}
    if "classifier" in cfg.heads:
        p["classifier"] = linear.spec(cfg, (D,), (cfg.num_labels,), ("embed",), (None,), bias=True)
    if "span" in cfg.heads:
        p["span"] = linear.spec(cfg, (D,), (2,), ("embed",), (None,), bias=True)
    return p


def init(key: jax.Array, cfg: Config, mesh=None) -> dict:
    return sharding.init(key, spec(cfg), mesh)


def encode(params: dict, tokens: jax.Array, cfg: Config, *, token_types=None, valid=None, positions=None,
           segment_ids=None, key=None, return_aux: bool = False, return_weights: bool = False,
           block_fn=blocks.apply):
    """tokens [B, T] -> hidden [B, T, D] (``(hidden, aux)`` with aux ``weights`` when asked). ``valid``
    [B, T] marks real tokens (None = all); ``segment_ids`` keep packed sequences apart."""
    embed.check_tokens(tokens, cfg.vocab_size)
    B, T = tokens.shape
    decoder.check_length(T, cfg)
    dt = jnp.dtype(cfg.dtype)
    pos = jnp.broadcast_to(jnp.arange(T)[None], (B, T)) if positions is None else positions
    if token_types is not None:
        embed.check_tokens(token_types, cfg.type_vocab_size, "token type ids",
                           fix=f"segment A is 0, segment B is 1; this model has type_vocab_size="
                               f"{cfg.type_vocab_size}")
    tt = jnp.zeros_like(tokens) if token_types is None else token_types
    k_emb, k_layers = (None, None) if key is None else jax.random.split(key)
    x = decoder.embed(params["embed"], tokens, cfg, pos)
    x = x + jnp.take(params["embed"]["token_types"], tt, axis=0).astype(dt)
    x = ffn.dropout(norms.apply(params["embed_norm"], x, cfg), cfg.dropout, k_emb)
    mask = masks.make_mask(T, q_segment_ids=segment_ids, kv_valid=valid)
    x, ys = decoder.run_layers(params["layers"], x, cfg, mask=mask, positions=pos, key=k_layers,
                               return_weights=return_weights, block_fn=block_fn)
    if not (return_aux or return_weights):
        return x
    return x, {k: ys[k] for k in ("weights",) if k in ys}


def apply(params: dict, tokens: jax.Array, cfg: Config, *, token_types=None, valid=None, positions=None,
          segment_ids=None, key=None, return_weights: bool = False, block_fn=blocks.apply) -> dict:
    """tokens [B, T] -> dict with ``hidden`` [B, T, D], ``pooled`` [B, D] (with a pooler), and per head:
    ``mlm_logits`` [B, T, V], ``logits`` [B, num_labels], ``start_logits``/``end_logits`` [B, T]
    (float32); ``weights`` [L, B, H, T, T] when asked. (An encoder's output is already a dict of named
    outputs, so what other families return in aux is part of it.)"""
    dt = jnp.dtype(cfg.dtype)
    k_enc = k_cls = None
    if key is not None:
        k_enc, k_cls = jax.random.split(key)
    h, aux = encode(params, tokens, cfg, token_types=token_types, valid=valid, positions=positions,
                    segment_ids=segment_ids, key=k_enc, return_aux=True, return_weights=return_weights,
                    block_fn=block_fn)
    out = {"hidden": h, **aux}
    if cfg.pooler:
        out["pooled"] = jnp.tanh(linear.apply(params["pooler"], h[:, 0], "BD,DE->BE", dt))
    if "mlm" in cfg.heads:
        m = params["mlm"]
        t = ffn.ACTIVATIONS[cfg.activation](linear.apply(m["transform"], h, "BTD,DE->BTE", dt))
        t = norms.apply(m["norm"], t, cfg)
        out["mlm_logits"] = (embed.attend(params["embed"], t) + m["bias"].astype(dt)).astype(jnp.float32)
    if "classifier" in cfg.heads:
        rate = cfg.dropout if cfg.classifier_dropout is None else cfg.classifier_dropout
        pooled = ffn.dropout(out["pooled"], rate, k_cls)
        out["logits"] = linear.apply(params["classifier"], pooled, "BD,DC->BC", dt).astype(jnp.float32)
    if "span" in cfg.heads:
        se = linear.apply(params["span"], h, "BTD,DC->BTC", dt).astype(jnp.float32)
        out["start_logits"], out["end_logits"] = se[..., 0], se[..., 1]
    return out


# ------------------------------------------------------------------------------------------------------------
# Hugging Face mapping
_CLASSES = {"mlm": "BertForMaskedLM", "classifier": "BertForSequenceClassification",
            "span": "BertForQuestionAnswering"}  # the transformers class of each head


def _architecture(cfg: Config) -> str:
    """The transformers class holding ``cfg``: the one of its head, or the bare BertModel."""
    return next((cls for head, cls in _CLASSES.items() if head in cfg.heads), "BertModel")


def _read_config(hc: dict, names: set[str]) -> dict:
    """Heads and pooler from the checkpoint's tensor names (config.json does not say them); without names
    (a config alone) a bare BertModel with its pooler."""
    heads = [h for h, there in (("mlm", any(n.startswith("cls.predictions.") for n in names)),
                                ("classifier", "classifier.weight" in names),
                                ("span", "qa_outputs.weight" in names)) if there]
    return {"heads": tuple(heads), "pooler": not names or "bert.pooler.dense.weight" in names}


def _one_head(cfg: Config) -> str | None:
    return None if len(cfg.heads) <= 1 else f"several heads {cfg.heads} (a transformers model class has one)"


def _pooler_as_class(cfg: Config) -> str | None:
    arch = _architecture(cfg)
    if cfg.pooler or arch in ("BertForMaskedLM", "BertForQuestionAnswering"):
        return None
    return f"{arch} has a pooler but pooler=False"


def _write_config(cfg: Config, hc: dict) -> dict:
    hc["architectures"] = [_architecture(cfg)]
    if "classifier" in cfg.heads:  # transformers reads num_labels from the label maps
        hc.pop("num_labels", None)
        hc["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
        hc["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    return hc


_E, _L, _C = "bert.embeddings.", "bert.encoder.layer.{i}.", "cls.predictions."
_QKV = (("q", "query"), ("k", "key"), ("v", "value"))
HF = hfmap.HFMapping(
    model_types={"bert": "BERT (incl. sentence-transformers)"},
    architectures={"bert": "BertModel"},  # write_config picks the class of the head
    fields=(
        hfmap.Field("vocab_size", "vocab_size"),
        hfmap.Field("max_position_embeddings", "max_len"),
        hfmap.Field("hidden_size", "d_model"),
        hfmap.Field("num_attention_heads", "n_heads"),
        hfmap.Field("num_hidden_layers", "n_layers"),
        hfmap.Field("intermediate_size", "d_ff"),
        hfmap.Field("hidden_act", "activation", "gelu", values=hfmap.ACTIVATIONS),
        hfmap.Field("layer_norm_eps", "norm_eps", 1e-12),
        hfmap.Field("hidden_dropout_prob", "dropout", 0.1),
        hfmap.Field("attention_probs_dropout_prob", "attn_dropout", 0.1),
        hfmap.Field("type_vocab_size", "type_vocab_size", 2),
        hfmap.Field("classifier_dropout", "classifier_dropout", None),
        hfmap.Field("num_labels", "num_labels", None, export=False,
                    read=lambda n, hc: n or len(hc.get("id2label") or {}) or 2),
    ),
    fixed={"norm_position": "post", "embed_scale": False, "pos_emb": "learned", "norm": "layernorm",
           "use_bias": True},
    constants={"position_embedding_type": "absolute"},
    checks=(hfmap.only("position_embedding_type", ("absolute",), "absolute",
                       "BERT position_embedding_type={value!r} (only 'absolute')"),
            *(hfmap.only(k, (False, None), False, "BERT as a decoder (is_decoder / add_cross_attention)")
              for k in ("is_decoder", "add_cross_attention"))),
    export_checks=(hfmap.plain_attention, _one_head, _pooler_as_class),
    read_config=_read_config,
    write_config=_write_config,
    prefix="bert.",
    rules=(
        ("embed/tokens", _E + "word_embeddings.weight", "copy"),
        ("embed/positions", _E + "position_embeddings.weight", "copy"),
        ("embed/token_types", _E + "token_type_embeddings.weight", "copy"),
        ("embed_norm/scale", _E + "LayerNorm.weight", "copy"), ("embed_norm/bias", _E + "LayerNorm.bias", "copy"),
        *((f"layers/attn/{x}/w", _L + f"attention.self.{hf}.weight", "linear1") for x, hf in _QKV),
        *((f"layers/attn/{x}/b", _L + f"attention.self.{hf}.bias", "vec") for x, hf in _QKV),
        ("layers/attn/o/w", _L + "attention.output.dense.weight", "linear2"),
        ("layers/attn/o/b", _L + "attention.output.dense.bias", "copy"),
        ("layers/norm1/scale", _L + "attention.output.LayerNorm.weight", "copy"),
        ("layers/norm1/bias", _L + "attention.output.LayerNorm.bias", "copy"),
        ("layers/mlp/wi/w", _L + "intermediate.dense.weight", "linear1"),
        ("layers/mlp/wi/b", _L + "intermediate.dense.bias", "copy"),
        ("layers/mlp/wo/w", _L + "output.dense.weight", "linear1"), ("layers/mlp/wo/b", _L + "output.dense.bias", "copy"),
        ("layers/norm2/scale", _L + "output.LayerNorm.weight", "copy"),
        ("layers/norm2/bias", _L + "output.LayerNorm.bias", "copy"),
        ("pooler/w", "bert.pooler.dense.weight", "linear1"), ("pooler/b", "bert.pooler.dense.bias", "copy"),
        ("mlm/transform/w", _C + "transform.dense.weight", "linear1"),
        ("mlm/transform/b", _C + "transform.dense.bias", "copy"),
        ("mlm/norm/scale", _C + "transform.LayerNorm.weight", "copy"),
        ("mlm/norm/bias", _C + "transform.LayerNorm.bias", "copy"),
        ("mlm/bias", _C + "bias", "copy"),
        ("classifier/w", "classifier.weight", "linear1"), ("classifier/b", "classifier.bias", "copy"),
        ("span/w", "qa_outputs.weight", "linear1"), ("span/b", "qa_outputs.bias", "copy"),
    ),
    # TF-era names; the MLM output bias is saved under either name
    renames={"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias",
             "cls.predictions.decoder.bias": "cls.predictions.bias"},
    # buffers, the decoder tied to the embedding, and the next-sentence head jaxlm does not have
    ignored=("position_ids", "cls.predictions.decoder.", "cls.seq_relationship."),
    bare=("BertModel",),
)
