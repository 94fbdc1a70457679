"""Context parallelism: the sequence dimension of activations sharded over the ``context`` mesh axis.

With ``mesh.context = c`` every device holds ``T / c`` tokens of each row between blocks (the rule
``seq -> context`` of :data:`jaxlm.sharding.RULES` applies to every ``constrain(x, ("batch", "seq", ...))``),
so activations, the norms, the FFN and the loss take ``1 / c`` of the memory and FLOPs per device.
Attention is the one place tokens meet: :func:`place` keeps the queries, the scores ``[B, H, T / c, S]``, the
mask and the output sharded by query position and gathers keys and values whole (an all-gather of
``[B, S, G, K]`` over ``context``, which XLA inserts and overlaps).

Why all-gathered keys/values rather than a ring (``ppermute`` of K/V blocks with an online softmax): for
the models in this zoo the gathered K/V of one layer (``2 S G K`` values per row: grouped-query attention
makes it small, e.g. 2 x 4096 x 8 x 128 for llama2-70b-like shapes) is small next to the scores this
removes, it moves the same bytes as a full ring pass, needs no load balancing for causal masks (every device
computes its dense ``T / c x S`` block; the mask's zero half is computed on every device alike, so no
zig-zag reordering is needed) and the result is the same arithmetic as one device, so losses match to
float rounding. A ring wins when one layer's K/V of the whole sequence does not fit beside the scores,
i.e. at very long sequences with many key/value heads; it is not implemented here.
"""

from __future__ import annotations

import jax

from jaxlm import sharding
from jaxlm.config import ConfigError


def size() -> int:
    """How many ways the sequence dimension is split on the mesh in use (the mesh axes the rules map
    ``seq`` to; 1 outside :func:`jaxlm.sharding.use_mesh`)."""
    return sharding.axis_size("seq")


def check_divides(seq_len: int, context: int) -> None:
    """ConfigError naming the fix unless ``context`` divides ``seq_len`` (each device holds an equal block
    of every row)."""
    if context > 1 and seq_len % context:
        # sizes that divide both: the mesh's other axes take up the rest of the devices
        ok = [c for c in range(context - 1, 1, -1) if context % c == 0 and seq_len % c == 0]
        ok = ok or [c for c in range(2, context * 2 + 1) if seq_len % c == 0][:4]
        near = context * max(1, round(seq_len / context))
        raise ConfigError(f"mesh.context={context} does not divide data.seq_len={seq_len}: context parallelism "
                          f"gives every device an equal block of each row. Use data.seq_len={near} or "
                          f"mesh.context in {ok or [1]}.")


def place(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None
          ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """Shardings of self-attention's operands under context parallelism (identity when ``context`` is 1):
    q [B, T, H, K] and mask [B|1, 1|H, T, S] by query position, k/v [B, S, G, K] gathered whole."""
    c = size()
    if c == 1:
        return q, k, v, mask
    check_divides(q.shape[1], c)
    q = sharding.constrain(q, ("batch", "seq", "heads", None))
    k = sharding.constrain(k, ("batch", None, "kv_heads", None))
    v = sharding.constrain(v, ("batch", None, "kv_heads", None))
    if mask is not None and mask.shape[-2] == q.shape[1] and mask.shape[-2] > 1:
        mask = sharding.constrain(mask, ("batch" if mask.shape[0] > 1 else None, None, "seq", None))
    return q, k, v, mask


def output(x: jax.Array) -> jax.Array:
    """Attention's output [B, T, H, K] kept sharded by query position (identity when ``context`` is 1)."""
    if size() == 1:
        return x
    return sharding.constrain(x, ("batch", "seq", "heads", None))


__all__ = ["size", "check_divides", "place", "output"]
