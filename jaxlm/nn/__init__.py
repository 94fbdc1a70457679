"""Building blocks. Each is a ``spec(cfg)`` declaring its parameters and a pure ``apply(p, x, cfg, ...)``,
where ``cfg`` is the block's own narrow config (:class:`attention.AttentionConfig`, :class:`ffn.FFNConfig`,
:class:`norms.NormConfig`, :class:`blocks.BlockConfig`) or a model Config that provides it.

Axis glossary (used in shape comments and einsum strings, as in gemma):

====  ==============================================
B     batch
T     query / sequence length
S     key/value length (source length, cache length)
D     d_model (``embed``)
H     query heads (``heads``)
G     key/value heads (``kv_heads``); H = G * h
K     per-head dimension (``head_dim``)
F     feed-forward width (``mlp``)
V     vocabulary (``vocab``)
L     layers (``layers``)
E     experts of a mixture-of-experts layer (``experts``)
N     tokens flattened over batch and sequence (routing)
C     slots per expert (capacity-factor routing)
====  ==============================================

Logical parameter axes: ``vocab, embed, mlp, heads, kv_heads, head_dim, layers, experts``; activations add
``batch, seq, act_embed`` (see :mod:`jaxlm.sharding` for how they map onto a mesh).
"""

from jaxlm.nn import attention, blocks, embed, ffn, linear, masks, moe, norms, positions, stack

__all__ = ["attention", "blocks", "embed", "ffn", "linear", "masks", "moe", "norms", "positions", "stack"]
