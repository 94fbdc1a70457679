"""A sparse mixture-of-experts decoder (Jiang et al. 2024, "Mixtral of Experts").

Mixtral is the Mistral 7B decoder (pre-norm RMSNorm, rotary positions, grouped-query attention, untied
head, no biases) with every feed-forward layer replaced by a routed mixture of ``n_experts`` SwiGLU experts
of which each token uses ``top_k`` (8 and 2 in Mixtral 8x7B): the router's softmax over all experts, the
top-k kept and renormalised, the experts' outputs summed with those weights (:mod:`jaxlm.nn.moe`). It is the
shared decoder stack (:mod:`jaxlm.models.decoder`); the block's FFN is :func:`jaxlm.nn.moe.apply` because
the Config's ``ffn_cfg`` is a :class:`~jaxlm.nn.moe.MoEConfig`.

``apply(..., return_aux=True)`` returns ``(logits, aux)`` with ``aux["moe"]``: ``aux_loss`` (the
load-balancing loss, as transformers' ``load_balancing_loss_func``), ``z_loss`` (router z-loss), ``load``
[E] (fraction of tokens per expert, averaged over layers), ``dropped`` and ``loss`` (the weighted sum the
training task adds to the objective: ``aux_loss_weight * aux_loss + router_z_loss_weight * z_loss``).

Deviations:
- sliding-window attention (Mistral's, ``sliding_window`` in config.json) is not implemented; Mixtral's
  released configs set it to null, and a checkpoint with a window is refused.
- the load-balancing loss counts every position, padding included (transformers weights it by the attention
  mask); jaxlm's causal_lm batches pad only at the end of packed rows.
- router jitter noise (``router_jitter_noise``, 0 in Mixtral) is not implemented.
- ``dispatch="capacity"`` (GShard/Switch fixed-capacity routing that drops overflow) is an option; Mixtral
  is dropless, the default.
- the paper does not state its load-balancing weight: ``aux_loss_weight`` defaults to Switch Transformer's
  0.01 (transformers' MixtralConfig default is 0.001; import keeps the checkpoint's value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax

from jaxlm import params as P
from jaxlm.models import decoder, hfmap
from jaxlm.models.base import ModelConfig, Preset
from jaxlm.nn import moe


@dataclass(frozen=True, kw_only=True)
class Config(ModelConfig):
    family: ClassVar[str] = "mixtral"
    vocab_size: int = 32000
    max_len: int = 32768
    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = 8
    n_layers: int = 32
    d_ff: int = 14336  # each expert's hidden width
    dropout: float = 0.0
    attn_dropout: float = 0.0
    activation: str = "swiglu"
    norm: str = "rmsnorm"
    pos_emb: str = "rope"
    rope_theta: float = 1e6
    tie_embeddings: bool = False
    use_bias: bool = False
    # the mixture of experts (jaxlm.nn.moe.MoEConfig)
    n_experts: int = 8
    top_k: int = 2
    dispatch: str = "dropless"  # or "capacity"
    capacity_factor: float = 1.25  # "capacity" dispatch only
    aux_loss_weight: float = 0.01
    router_z_loss_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _ = self.ffn_cfg  # MoEConfig validates top_k, capacity_factor, dispatch (one error naming the field)

    @property
    def ffn_cfg(self) -> moe.MoEConfig:
        return moe.MoEConfig(
            d_model=self.d_model, d_ff=self.d_ff, n_experts=self.n_experts, top_k=self.top_k,
            activation=self.activation, dispatch=self.dispatch, capacity_factor=self.capacity_factor,
            dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias, init=self.init,
            init_std=self.init_std, out_scale=self._out_scale, dropout=self.ffn_dropout,
            aux_loss_weight=self.aux_loss_weight, router_z_loss_weight=self.router_z_loss_weight)


KIND = "decoder"
TASKS = ("causal_lm",)

PRESETS: dict[str, Preset] = {
    "mixtral-8x7b": Preset(Config(), "Jiang et al. 2024, Mixtral of Experts (mistralai/Mixtral-8x7B-v0.1)",
                           46_702_792_704),
    "mixtral-tiny": Preset(
        Config(vocab_size=512, max_len=128, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=128,
               rope_theta=10000.0),
        "test-sized Mixtral (8 experts, top-2, grouped-query 4 over 2 heads)", 484_672),
}

spec = decoder.spec
init = decoder.init
init_cache = decoder.init_cache


def apply(params: dict, tokens: jax.Array, cfg: Config, **kw):
    """tokens [B, T] -> logits [B, T, V] float32: :func:`jaxlm.models.decoder.apply` (same keywords and
    return convention), with the layers' router statistics combined into ``aux["moe"]`` (see the module
    docstring) whenever aux is returned."""
    out = decoder.apply(params, tokens, cfg, **kw)
    if isinstance(out, tuple) and "moe" in out[1]:
        out[1]["moe"] = moe.summarize(out[1]["moe"], cfg)
    return out


def active_params(cfg: Config) -> int:
    """Parameters one token uses: all but the unused ``n_experts - top_k`` experts of every layer (what the
    FLOP and MFU estimates count)."""
    flat = P.flatten(spec(cfg))
    experts = sum(p.size for k, p in flat.items() if k.startswith("layers/mlp/experts/"))
    return P.count(flat) - experts + experts * cfg.top_k // cfg.n_experts


# ------------------------------------------------------------------------------------------------------------
# Hugging Face mapping (MixtralForCausalLM; transformers saves one tensor per expert: w1 gate, w3 up, w2 down)
def _rope_theta(v: float | None, hc: dict) -> float:
    return float(v if v is not None else (hc.get("rope_parameters") or {}).get("rope_theta", 1e6))


def _plain_rope(hc: dict) -> str | None:
    scaling = hc.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type")) if scaling else \
        (hc.get("rope_parameters") or {}).get("rope_type", "default")
    return None if kind in (None, "default") else f"RoPE scaling {kind!r} (only plain RoPE is implemented)"


def _no_sliding_window(hc: dict) -> str | None:
    sw = hc.get("sliding_window")
    if sw is None or sw >= hc.get("max_position_embeddings", 0):
        return None
    return (f"sliding-window attention (sliding_window={sw} < max_position_embeddings="
            f"{hc.get('max_position_embeddings')}); only sliding_window=null (full attention) is")


def _no_jitter(hc: dict) -> str | None:
    j = hc.get("router_jitter_noise", 0.0) or 0.0
    return None if j == 0 else f"router_jitter_noise={j} (only 0 is implemented)"


_L = "model.layers.{i}."
_X = _L + "block_sparse_moe.experts.{e}."
_PROJ = (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"))
HF = hfmap.HFMapping(
    model_types={"mixtral": "Mixtral"},
    architectures={"mixtral": "MixtralForCausalLM"},
    fields=(
        hfmap.Field("vocab_size", "vocab_size"),
        hfmap.Field("max_position_embeddings", "max_len", 4096 * 32),
        hfmap.Field("hidden_size", "d_model"),
        hfmap.Field("num_attention_heads", "n_heads"),
        hfmap.Field("num_key_value_heads", "n_kv_heads", None, write=lambda cfg: cfg.kv_heads,
                    read=lambda g, hc: None if (g or hc["num_attention_heads"]) == hc["num_attention_heads"] else g),
        hfmap.Field("num_hidden_layers", "n_layers"),
        hfmap.Field("intermediate_size", "d_ff"),
        hfmap.Field("head_dim", "d_head", None, write=lambda cfg: cfg.head_dim,
                    read=lambda k, hc: None if not k or k * hc["num_attention_heads"] == hc["hidden_size"] else k),
        hfmap.Field("rms_norm_eps", "norm_eps", 1e-5),
        hfmap.Field("rope_theta", "rope_theta", None, read=_rope_theta),
        hfmap.Field("rope_parameters", write=lambda cfg: {"rope_type": "default", "rope_theta": cfg.rope_theta}),
        hfmap.Field("tie_word_embeddings", "tie_embeddings", False),
        hfmap.Field("attention_dropout", "attn_dropout", 0.0),
        hfmap.Field("num_local_experts", "n_experts", 8),
        hfmap.Field("num_experts_per_tok", "top_k", 2),
        hfmap.Field("router_aux_loss_coef", "aux_loss_weight", 0.001),
    ),
    fixed={"norm_position": "pre", "embed_scale": False, "pos_emb": "rope", "norm": "rmsnorm",
           "activation": "swiglu", "final_norm": True, "use_bias": False},
    constants={"hidden_act": "silu", "sliding_window": None, "router_jitter_noise": 0.0,
               "output_router_logits": False},
    checks=(hfmap.only("hidden_act", ("silu", "swish"), "silu",
                       "{model_type} with hidden_act={value!r} (jaxlm's Mixtral experts use SwiGLU, 'silu')"),
            _no_sliding_window, _no_jitter, _plain_rope),
    drop=("rope_scaling",),
    prefix="model.",
    rules=(
        ("embed/tokens", "model.embed_tokens.weight", "copy"),
        ("layers/norm1/scale", _L + "input_layernorm.weight", "copy"),
        ("layers/norm2/scale", _L + "post_attention_layernorm.weight", "copy"),
        *((f"layers/attn/{x}/w", _L + f"{hf}.weight", "linear1") for x, hf in _PROJ),
        ("layers/attn/o/w", _L + "self_attn.o_proj.weight", "linear2"),
        ("layers/mlp/router/w", _L + "block_sparse_moe.gate.weight", "linear1"),
        ("layers/mlp/experts/wi_0/w", _X + "w1.weight", "linear1"),
        ("layers/mlp/experts/wi_1/w", _X + "w3.weight", "linear1"),
        ("layers/mlp/experts/wo/w", _X + "w2.weight", "linear1"),
        ("final_norm/scale", "model.norm.weight", "copy"),
        ("lm_head/w", "lm_head.weight", "linear1"),
    ),
    ignored=("rotary_emb.inv_freq",),
)
