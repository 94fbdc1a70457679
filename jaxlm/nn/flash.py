"""Memory-lean attention with its own VJP: the T x S probabilities are never saved for the backward pass.

The forward pass computes, per block of ``block_q`` queries, ``softmax(Q K^T / sqrt(d) + bias, masked) V``
and keeps only the output and the softmax statistics of each row (max m and 1/l, l = sum_s exp(logits - m);
[B, G, h, T, 2]). The backward pass recomputes the probabilities of each query block from them
(``p = exp(logits - m) / l``) and applies
the standard softmax-attention gradients (Dao et al., 2022, "FlashAttention", Algorithm 4):

    dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dO * O)),   dQ = dS K / sqrt(d),   dK = dS^T Q / sqrt(d)

Why: under ``jax.grad`` + ``lax.scan`` over layers, the reference einsum-softmax path saves the float32
logits/probabilities of every layer ([L, B, H, T, S]) and the backward pass spends its time writing and
reading them. Here the residuals per layer are q, k, v, out and lse: O(T) instead of O(T^2).

Score scale and soft-cap (Gemma 2): logits are ``cap(q.k * scale)`` with ``cap(x) = c * tanh(x / c)``; the
backward pass multiplies dS by cap'(x) = 1 - tanh(x / c)^2 before the dQ/dK products.

Query blocks are a static Python loop (each block attends to all S keys, so no online softmax is needed and
the result equals the reference to float32 rounding); ``block_q >= T`` is one block, which is fastest on a
CPU at short sequence lengths. Grouped-query layout as in :mod:`jaxlm.nn.attention`: q [B, T, G, h, K].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

BLOCK_Q = 512  # queries per block by default (each block attends to all S keys)
_NEG = -1e30  # same masked value as the reference path: a fully-masked row becomes uniform, not NaN


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    block_q: int = BLOCK_Q,
    scale: float | None = None,
    softcap: float | None = None,
) -> jax.Array:
    """Scaled dot-product attention, q: [B, T, H, K]; k, v: [B, S, G, K] (H % G == 0); mask: bool
    broadcastable to [B, H, T, S] (True = attend); bias: float broadcastable to [B, H, T, S]; ``scale``
    multiplies q.k (None = 1/sqrt(K)); ``softcap`` c caps the scaled scores to c * tanh(s / c).
    Returns out [B, T, H, K] in q's dtype; gradients flow to q, k, v and bias."""
    B, T, H, K = q.shape
    S, G = k.shape[1], k.shape[2]
    if H % G:
        raise ValueError(f"{H} query heads cannot be grouped over {G} key/value heads.")
    if block_q <= 0:
        raise ValueError(f"block_q={block_q} must be a positive number of queries per block.")
    h = H // G
    qg = q.reshape(B, T, G, h, K)
    m = None if mask is None else _group(jnp.broadcast_to(mask, (mask.shape[0], mask.shape[1], T, S)), G, h)
    b = None if bias is None else _group(jnp.broadcast_to(bias, (bias.shape[0], bias.shape[1], T, S)), G, h)
    sc = (K ** -0.5 if scale is None else float(scale), None if softcap is None else float(softcap))
    out = _flash(qg, k, v, m, b, min(block_q, T), sc)
    return out.reshape(B, T, H, K)


def _group(x: jax.Array, G: int, h: int) -> jax.Array:
    """[B|1, H|1, T, S] -> [B|1, G|1, h|1, T, S] to match grouped logits [B, G, h, T, S]."""
    b, n, t, s = x.shape
    if n == 1:
        return x[:, :, None]
    return x.reshape(b, G, h, t, s)


def _blocks(T: int, bq: int) -> list[tuple[int, int]]:
    return [(i, min(i + bq, T)) for i in range(0, T, bq)]


def _logits(qb, k, mb, bb, sc):
    """qb [B, t, G, h, K], k [B, S, G, K] -> (float32 masked logits [B, G, h, t, S], tanh of the capped
    scores or None). ``sc`` = (scale, softcap)."""
    scale, cap = sc
    s = jnp.einsum("BTGhK,BSGK->BGhTS", qb, k, preferred_element_type=jnp.float32) * scale
    th = None
    if cap is not None:
        th = jnp.tanh(s / cap)
        s = cap * th
    if bb is not None:
        s = s + bb.astype(jnp.float32)
    if mb is not None:
        s = jnp.where(mb, s, _NEG)
    return s, th


def _sl(x, i, j):
    """Rows [i, j) of a grouped [.., .., .., T, S] mask/bias (size-1 T broadcasts)."""
    return None if x is None else (x if x.shape[3] == 1 else x[:, :, :, i:j])


def _forward(qg, k, v, mask, bias, bq, sc):
    outs, lses = [], []
    for i, j in _blocks(qg.shape[1], bq):
        s, _ = _logits(qg[:, i:j], k, _sl(mask, i, j), _sl(bias, i, j), sc)  # [B, G, h, t, S]
        mx = jnp.max(s, axis=-1, keepdims=True)
        p = jnp.exp(s - mx)
        den = jnp.sum(p, axis=-1, keepdims=True)
        o = jnp.einsum("BGhTS,BSGK->BTGhK", (p / den).astype(v.dtype), v)
        outs.append(o)
        # row max and 1/sum, not lse = max + log(sum): a fully-masked row has max = -1e30, and
        # -1e30 + log(S) rounds back to -1e30 in float32, which would lose the 1/S of its uniform row
        lses.append(jnp.concatenate([mx, 1.0 / den], axis=-1))  # [B, G, h, t, 2]
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
    lse = lses[0] if len(lses) == 1 else jnp.concatenate(lses, axis=-2)
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _flash(qg, k, v, mask, bias, bq, sc):
    return _forward(qg, k, v, mask, bias, bq, sc)[0]


def _flash_fwd(qg, k, v, mask, bias, bq, sc):
    out, lse = _forward(qg, k, v, mask, bias, bq, sc)
    return out, (qg, k, v, mask, bias, out, lse)


def _flash_bwd(bq, sc, res, dout):
    qg, k, v, mask, bias, out, lse = res
    scale = sc[0]
    dq_blocks = []
    dk = jnp.zeros(k.shape, jnp.float32)
    dv = jnp.zeros(v.shape, jnp.float32)
    dbias = None if bias is None else jnp.zeros(bias.shape, jnp.float32)
    for i, j in _blocks(qg.shape[1], bq):
        qb, dob = qg[:, i:j], dout[:, i:j]
        s, th = _logits(qb, k, _sl(mask, i, j), _sl(bias, i, j), sc)
        st = lse[..., i:j, :]
        p = jnp.exp(s - st[..., :1]) * st[..., 1:]  # [B, G, h, t, S], rows sum to 1
        dv = dv + jnp.einsum("BGhTS,BTGhK->BSGK", p, dob, preferred_element_type=jnp.float32)
        dp = jnp.einsum("BTGhK,BSGK->BGhTS", dob, v, preferred_element_type=jnp.float32)
        delta = jnp.einsum("BTGhK,BTGhK->BGhT", dob.astype(jnp.float32), out[:, i:j].astype(jnp.float32))
        ds = p * (dp - delta[..., None])  # d(loss)/d(logits)
        mb = _sl(mask, i, j)
        if mb is not None:  # masked logits are constants (where), as in the reference: no gradient
            ds = jnp.where(mb, ds, 0.0)
        if dbias is not None:
            db = _reduce_to(ds, bias.shape[:3] + (j - i if bias.shape[3] != 1 else 1, bias.shape[4]))
            dbias = dbias + db if bias.shape[3] == 1 else dbias.at[:, :, :, i:j].add(db)
        if th is not None:  # through the soft-cap: d(c tanh(x / c))/dx = 1 - tanh^2
            ds = ds * (1.0 - th * th)
        dq_blocks.append(jnp.einsum("BGhTS,BSGK->BTGhK", ds, k, preferred_element_type=jnp.float32) * scale)
        dk = dk + jnp.einsum("BGhTS,BTGhK->BSGK", ds, qb, preferred_element_type=jnp.float32) * scale
    dq = dq_blocks[0] if len(dq_blocks) == 1 else jnp.concatenate(dq_blocks, axis=1)
    dmask = None
    return (dq.astype(qg.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dmask,
            None if bias is None else dbias.astype(bias.dtype))


def _reduce_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sum ``x`` over the axes where ``shape`` has size 1 (undo broadcasting)."""
    axes = tuple(a for a, (n, m) in enumerate(zip(shape, x.shape, strict=True)) if n == 1 and m != 1)
    return jnp.sum(x, axis=axes, keepdims=True) if axes else x


_flash.defvjp(_flash_fwd, _flash_bwd)
