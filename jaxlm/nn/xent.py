"""Fused output projection + softmax cross-entropy with its own VJP: the [tokens, vocab] logits are never
stored for the backward pass.

``loss_t = logsumexp_v(h_t . w_v) - h_t . w_{y_t}``, computed in blocks of ``block`` tokens. The forward pass
keeps only the per-token log-sum-exp; the backward pass recomputes each block's logits (both passes are a
``lax.scan`` over token blocks, so one block's logits are live at a time) and applies
``dlogits = (softmax - onehot(y)) * weight * dloss``, ``dh = dlogits W``, ``dW = dlogits^T h``.

Why: the plain path (``logits = h @ E^T`` then :func:`jaxlm.losses.cross_entropy`) writes float32 logits of
shape [B, T, V], reads them for the log-sum-exp, the target logit and the argmax, saves them for the
backward pass and writes a second [B, T, V] array for their gradient. At vocab 50,257 that is ~400 MB per
array at batch 8 x 256. Here the largest temporary is one [block, V] block.

Plain cross-entropy only (no label smoothing or z-loss: use :func:`jaxlm.losses.cross_entropy` for those).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def cross_entropy(
    hidden: jax.Array,
    table: jax.Array,
    targets: jax.Array,
    weights: jax.Array | None = None,
    *,
    block: int = 1024,
) -> dict[str, jax.Array]:
    """Cross-entropy of ``logits = hidden @ table^T`` without materialising the logits.

    hidden [..., D] (any float dtype; the logits are float32), table [V, D] (the tied embedding; pass
    ``w.T`` for an untied [D, V] head), integer targets [...], weights [...] (None = all 1). Returns the
    same sums as :func:`jaxlm.losses.cross_entropy`: ``loss``, ``nll`` (equal here), ``correct``
    (argmax == target) and ``weight``. Gradients flow to ``hidden`` and ``table``.
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {hidden.shape} and targets {targets.shape} disagree: hidden must be "
                         f"[..., D] over the same positions as targets [...].")
    if table.ndim != 2 or table.shape[1] != hidden.shape[-1]:
        raise ValueError(f"table {table.shape} must be [vocab, {hidden.shape[-1]}] (for an untied [D, V] "
                         "head pass its transpose).")
    if block <= 0:
        raise ValueError(f"block={block} must be a positive number of tokens.")
    D = hidden.shape[-1]
    h = hidden.reshape(-1, D)
    t = targets.reshape(-1).astype(jnp.int32)
    w = jnp.ones(t.shape, jnp.float32) if weights is None else weights.reshape(-1).astype(jnp.float32)
    loss, correct = _xent(h, table, t, w, min(block, h.shape[0]))
    wsum = jnp.sum(w)
    return {"loss": loss, "nll": loss, "correct": correct, "weight": wsum}


def _split(a: jax.Array, n_blocks: int, block: int) -> jax.Array:
    """[N, ...] -> [n_blocks, block, ...], zero-padded at the end (padded tokens carry weight 0)."""
    pad = n_blocks * block - a.shape[0]
    a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape(n_blocks, block, *a.shape[1:])


def _logits(hb, table):
    return jnp.einsum("ND,VD->NV", hb, table.astype(hb.dtype), preferred_element_type=jnp.float32)


def _forward(h, table, t, w, block):
    """Loss and correct sums, and the per-token log-sum-exp [N]. A ``lax.scan`` over token blocks: the
    blocks depend on each other through the carry, so XLA keeps one [block, V] logits block live at a
    time (an unrolled Python loop lets it schedule every block's logits at once)."""
    n = h.shape[0]
    nb = -(-n // block)

    def body(carry, xs):
        loss, correct = carry
        hb, tb, wb = xs
        z = _logits(hb, table)  # [block, V]
        lse = jax.nn.logsumexp(z, axis=-1)
        tz = jnp.take_along_axis(z, tb[:, None], axis=-1)[:, 0]
        loss = loss + jnp.sum((lse - tz) * wb)
        correct = correct + jnp.sum((jnp.argmax(z, axis=-1) == tb) * wb)
        return (loss, correct), lse

    zero = jnp.zeros((), jnp.float32)
    (loss, correct), lse = jax.lax.scan(body, (zero, zero), (_split(h, nb, block), _split(t, nb, block),
                                                             _split(w, nb, block)))
    return loss, correct, lse.reshape(-1)[:n]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _xent(h, table, t, w, block):
    loss, correct, _ = _forward(h, table, t, w, block)
    return loss, correct


def _xent_fwd(h, table, t, w, block):
    loss, correct, lse = _forward(h, table, t, w, block)
    return (loss, correct), (h, table, t, w, lse)


def _xent_bwd(block, res, g):
    """dlogits = (softmax - onehot(y)) * weight * dloss, one block at a time: dh per block, dtable summed."""
    h, table, t, w, lse = res
    g_loss, _ = g  # correct is a count: no gradient
    n = h.shape[0]
    nb = -(-n // block)
    table32 = table.astype(jnp.float32)

    def body(dtable, xs):
        hb, tb, wb, lb = xs
        z = _logits(hb, table)
        p = jnp.exp(z - lb[:, None])  # softmax [block, V]
        onehot = jax.nn.one_hot(tb, z.shape[-1], dtype=jnp.float32)
        dz = (p - onehot) * (wb * g_loss)[:, None]
        dh = jnp.einsum("NV,VD->ND", dz, table32)
        return dtable + jnp.einsum("NV,ND->VD", dz, hb.astype(jnp.float32)), dh

    dtable, dh = jax.lax.scan(body, jnp.zeros(table.shape, jnp.float32),
                              (_split(h, nb, block), _split(t, nb, block), _split(w, nb, block),
                               _split(lse, nb, block)))
    dh = dh.reshape(-1, h.shape[-1])[:n]
    return dh.astype(h.dtype), dtable.astype(table.dtype), None, None


_xent.defvjp(_xent_fwd, _xent_bwd)
