"""The analytic count of activations: per-device bytes of the tensors the backward pass keeps, by remat
policy, and the working sets of one layer's backward pass and of the loss (:func:`activation_bytes`).

A count of tensors, not a measurement. What JAX lists as residuals (``jax.ad_checkpoint``) is adjusted by
what each compiler was measured to keep (libtpu's buffer report; the per-layer slope and intercept of
XLA:CPU's memory analysis; benchmarks/HISTORY.md "The recount" and "The CPU matrix within 15 %"). One
block's count is assembled by :func:`_block` from named terms: the residual stream around the norms, the
attention inputs and outputs, the attention's [T, S] tensors, the FFN's hidden tensors, the MoE dispatch,
the weights cast to the compute dtype, what a compiler keeps beyond JAX's list, and the backward working
set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxlm.nn import attention, ffn, stack
from jaxlm.nn import flash as flash_lib
from jaxlm.plan.abstract import mesh_sizes, seq_lens
from jaxlm.train import config as C


@dataclass(frozen=True)
class Sizes:
    """The per-device sizes the count multiplies: b rows per device, T source / U target tokens, D model
    width, H/G query/key-value heads of K dims, F ffn width, V vocabulary (``Ht``, ``Gt``, ``Ft``, ``Vt``:
    their share over ``tensor`` when it divides them), a = compute-dtype bytes; E experts of which each
    token uses k (E = 0: a dense FFN)."""

    platform: str  # the compiler planned for: "cpu" or "tpu"
    remat: str  # resolved for the platform
    b: int
    T: int
    U: int  # 0 unless seq2seq
    a: int
    D: int
    H: int
    G: int
    K: int
    F: int
    Ht: int
    Gt: int
    Ft: int
    Vt: int
    E: int
    k: int
    nF: int  # FFN matrices: 3 gated (wi_0, wi_1, wo), else 2
    gated: bool
    drop: bool  # residual dropout on
    attn_drop: bool  # attention-probability dropout on
    flash: bool  # attention that keeps no [T, S] tensor for the backward pass
    norms_per_sublayer: int
    tp: int  # tensor
    cp: int  # context
    fs: int  # fsdp x context: how many ways the parameters are split (besides tensor)
    n_layers: int
    dec_layers: int
    casts_weights: bool  # compute dtype differs from the parameters'
    accumulates: bool  # several micro-batches


def _sizes(run: C.RunConfig, platform: str) -> Sizes:
    """The :class:`Sizes` of ``run`` (its mesh already filled) planned for ``platform``."""
    cfg, t = run.model, run.train
    ms = mesh_sizes(run)
    dp = ms.get("data", 1) * ms.get("fsdp", 1)
    tp, cp = ms.get("tensor", 1), ms.get("context", 1)
    T, U = seq_lens(run)
    D, H = cfg.d_model, cfg.n_heads
    G = cfg.n_kv_heads or H
    K = cfg.d_head or D // H
    F, V = cfg.d_ff, cfg.vocab_size
    attn_drop = bool(cfg.attn_dropout > 0 and t.dropout)
    # "auto" attention resolved for the platform planned (flash on TPU); dropout needs the probabilities
    flash = attention.resolve_impl(cfg.attn_impl, cfg.dtype, K, on=platform) in ("flash", "cudnn") and not attn_drop
    return Sizes(
        platform=platform, remat=stack.resolve_remat(cfg.remat, platform),
        b=max(1, (t.batch_size // t.grad_accum) // dp), T=T, U=U or 0, a=np.dtype(cfg.dtype).itemsize,
        D=D, H=H, G=G, K=K, F=F,
        Ht=H // tp if H % tp == 0 else H, Gt=G // tp if G % tp == 0 else G,
        Ft=F // tp if F % tp == 0 else F, Vt=V // tp if V % tp == 0 else V,
        E=getattr(cfg, "n_experts", 0) or 0, k=getattr(cfg, "top_k", 1) or 1,
        nF=3 if cfg.activation in ffn.GATED else 2, gated=cfg.activation in ffn.GATED,
        drop=bool(cfg.dropout > 0 and t.dropout), attn_drop=attn_drop, flash=flash,
        # the norms around each sub-layer: two per block, four with the post-norms of a family that sets them
        norms_per_sublayer=2 if getattr(cfg, "post_norms", False) else 1,
        tp=tp, cp=cp, fs=ms.get("fsdp", 1) * cp,
        n_layers=cfg.n_layers, dec_layers=getattr(cfg, "dec_layers", 0) or 0,
        casts_weights=np.dtype(cfg.dtype) != np.dtype(cfg.param_dtype), accumulates=t.grad_accum > 1)


# --- one block's terms (bytes per device) -------------------------------------------------------------
def _stream(d: Sizes, Tq: int, n_sub: int) -> tuple[int, int]:
    """(the residual stream around each norm: three float32 upcasts [b, Tq, D] and the compute-dtype
    output; the boolean residual-dropout masks, one [b, Tq, D] per sub-layer) over ``n_sub`` sub-layers."""
    xd = d.b * Tq * d.D * d.a
    stream = n_sub * d.norms_per_sublayer * (xd + 3 * d.b * Tq * d.D * 4)
    masks = n_sub * d.b * Tq * d.D if d.drop else 0
    return stream, masks


def _attention_io(d: Sizes, Tq: int, attns: tuple[int, ...]) -> tuple[int, int]:
    """(q/k/v, attention outputs) of each attention over ``attns`` keys: q and output [b, Tq, Ht, K],
    k and v [b, S, Gt, K]."""
    qkv = sum(d.b * Tq * d.Ht * d.K * d.a + 2 * d.b * s * d.Gt * d.K * d.a for s in attns)
    att_out = len(attns) * d.b * Tq * d.Ht * d.K * d.a
    return qkv, att_out


def _scores(d: Sizes, Tq: int, attns: tuple[int, ...]) -> tuple[int, int, int]:
    """The attention's [T, S] term: (elements of the [b, Ht, Tq, S] tensors, 0 with flash; bytes JAX lists:
    scores and probabilities in float32, probabilities in the compute dtype, with attention dropout its
    mask and the dropped probabilities; bytes the compiler keeps of them)."""
    elems = 0 if d.flash else sum(d.b * d.Ht * Tq * s for s in attns)
    listed = elems * (4 + 4 + d.a + (1 + d.a if d.attn_drop else 0))
    # libtpu keeps fewer of them for the backward pass: the float32 and compute-dtype probabilities (and
    # the dropout mask); scores, masking and dropped probabilities are fused into their consumers
    # (benchmarks/HISTORY.md "The recount"); so does XLA:CPU without attention dropout (the float32 and
    # compute-dtype probabilities)
    kept = listed
    if d.platform == "tpu":
        kept = elems * (4 + d.a + (1 if d.attn_drop else 0))
    elif d.platform == "cpu" and not d.attn_drop:
        kept = elems * (4 + d.a)
    return elems, listed, kept


def _ffn_tensor(d: Sizes, Tq: int) -> int:
    """One FFN hidden tensor [b, Tq, Ft]; routed experts: every token's, through each of its k experts."""
    return d.b * Tq * d.Ft * d.a * (d.k if d.E else 1)


def _moe_dispatch(d: Sizes, Tq: int) -> int:
    """A mixture-of-experts layer's dispatch residuals: the router's float32 logits and probabilities
    [b * Tq, E], and the k sorted copies of the tokens and of their outputs [k, b * Tq, D]."""
    if not d.E:
        return 0
    return d.b * Tq * d.E * 4 * 2 + 2 * d.k * d.b * Tq * d.D * d.a


def _weight_casts(d: Sizes, n_attn: int) -> int:
    """The layer's weights cast to the compute dtype, kept for the backward matmuls (a no-op cast keeps
    none), sharded like the parameters (the cast happens before the FSDP gather); ``n_attn`` attentions."""
    casts = 0
    if d.casts_weights:
        attn = n_attn * (d.D * (d.H + 2 * d.G) * d.K + d.H * d.K * d.D)  # q, k, v and o of each attention
        casts = (attn + max(d.E, 1) * d.nF * d.D * d.F) * d.a // (d.fs * d.tp)
    if d.E and d.platform == "tpu" and d.fs > 1 and d.remat == "none" and d.accumulates:
        # the routed dispatch all-gathers a layer's experts over FSDP in the compute dtype (their hidden
        # dimension split over tensor); with several micro-batches and no remat libtpu hoists that
        # gather, the same in every micro-batch, out of the accumulation loop and keeps every layer's
        # gathered copy (its buffer report: [layers, E, D, F / tensor] per expert matrix; not with one
        # micro-batch or another policy, and not XLA:CPU)
        experts = d.E * d.nF * d.D * d.F * d.a
        casts += experts // d.tp - (experts // (d.fs * d.tp) if casts else 0)
    return casts


def _compiler_extra(d: Sizes, Tq: int, ffn_tensor: int) -> int:
    """What the compilers keep beyond JAX's residual list without remat: libtpu (its buffer report) six
    [b, T, F] tensors of the FFN rather than its matmul inputs/outputs alone, and the queries before and
    after RoPE; XLA:CPU the same six FFN tensors of a gated FFN (the per-layer slope of its memory
    analysis)."""
    if d.platform == "tpu":
        return (6 - d.nF) * ffn_tensor + d.b * Tq * d.Ht * d.K * d.a
    if d.platform == "cpu" and d.gated:
        return (6 - d.nF) * ffn_tensor
    return 0


def _backward_work(d: Sizes, Tq: int, attns: tuple[int, ...], residuals: int, tt: int, tt_elems: int) -> float:
    """The working set of one layer's backward pass: its recomputed (or kept) residuals and their gradients
    at once, XLA:CPU's ragged_dot buffers of a MoE layer, flash attention's per-query-block tensors."""
    # 1.15 x the no-remat residuals matches XLA's memory analysis where the recomputation materialises
    # them (libtpu; XLA:CPU with dropout, whose random bits are drawn again)
    work = 1.15 * (residuals + tt)
    if d.platform == "cpu":
        # XLA:CPU fuses the recomputed elementwise work into the matmuls that consume it unless dropout's
        # random bits have to be drawn again: without dropout a layer's backward holds only the residuals
        # the policy makes it recompute for the backward matmuls (all under full; none under dots, whose
        # kept matmul outputs it reuses; half under none); without attention dropout, of the [T, S]
        # tensors only the float32 gradients of the probabilities and of the scores
        recomputed = 1.0 if d.drop else {"none": 0.5, "dots": 0.0, "dots_no_batch": 0.0, "full": 1.0}[d.remat]
        work = 1.15 * (recomputed * residuals + (tt if d.attn_drop else tt_elems * 8))
    if d.E and d.platform == "cpu":
        # XLA:CPU's ragged_dot holds float32 [E, k*N, F] tensors, every expert over every routed row, where
        # the grouped matmul needs [k*N, F]: four in the backward without remat, six with the forward
        # recomputed (fitted: benchmarks/HISTORY.md "Mixture of experts, counted from the buffers")
        work += (4 if d.remat == "none" else 6) * d.E * d.k * d.b * Tq * d.Ft * 4
    # flash attention's backward holds one query block's float32 scores, probabilities and their two
    # gradients ([b, H, block_q, S] each) instead of the whole [T, S]
    if d.flash:
        work += sum(4 * d.b * d.Ht * min(flash_lib.BLOCK_Q, Tq) * s * 4 for s in attns)
    return work


def _block(d: Sizes, Tq: int, S: int, cross_S: int = 0) -> dict:
    """One block's kept residuals under the remat policy (bytes) and its backward working set, for Tq query
    tokens per device attending S keys (and, with ``cross_S``, a cross-attention sub-layer over cross_S
    keys): ``{"kept": int, "work": float}``."""
    attns = (S, cross_S) if cross_S else (S,)
    n_sub = len(attns) + 1  # the attention sub-layer(s) and the FFN
    xd = d.b * Tq * d.D * d.a  # a sub-layer's input [b, Tq, D]
    stream, masks = _stream(d, Tq, n_sub)
    qkv, att_out = _attention_io(d, Tq, attns)
    tt_elems, tt, kept_tt = _scores(d, Tq, attns)
    f = _ffn_tensor(d, Tq)
    residuals = stream + qkv + att_out + d.nF * f + masks + _moe_dispatch(d, Tq)  # all but the [T, S] ones
    kept = {
        "none": residuals + kept_tt + _weight_casts(d, len(attns)) + _compiler_extra(d, Tq, f),
        "dots": n_sub * xd + qkv + att_out + tt_elems * d.a + 2 * f,  # two FFN tensors, gated or not
        "dots_no_batch": n_sub * xd + qkv + 2 * f,
        "full": xd,
    }[d.remat]
    return {"kept": kept, "work": _backward_work(d, Tq, attns, residuals, tt, tt_elems)}


def _loss(d: Sizes, Tl: int) -> int:
    """The loss's working set: float32 logits [b, T, Vt], their softmax and gradient (over the longer of the
    source and target tokens per device)."""
    return 3 * d.b * max(Tl, d.U // d.cp if d.U else 0) * d.Vt * 4


def activation_bytes(run: C.RunConfig, platform: str = "cpu") -> dict:
    """Per-device bytes of the activations the backward pass keeps, by remat policy, plus the working set
    of one layer's backward pass and of the loss. A count of tensors, not a measurement:

    per layer (b rows per device, T tokens, D model width, H/G query/key-value heads of K dims and F ffn
    width over ``tensor``, a = compute-dtype bytes):

    - ``none``: every residual: the norms' float32 upcasts of the residual stream (three [b, T, D]
      float32 each) and their outputs, q/k/v, float32 scores and probabilities [b, H, T, S], attention
      output, projections, the FFN's hidden activations, dropout masks, and the layer's weights cast to the
      compute dtype when it differs from the parameters' (``jax.ad_checkpoint`` lists these residuals);
    - ``dots``: matmul outputs only (q/k/v, the scores in the compute dtype and the queries laid out for
      them, the projections into the residual stream, two [b, T, F] FFN tensors);
    - ``dots_no_batch``: weight-matmul outputs only (q/k/v, projections, FFN; no [T, S] scores);
    - ``full``: the layer's input [b, T, D].

    An encoder-decoder's decoder layers (U target tokens) add a cross-attention sub-layer: a third norm,
    queries over U, keys/values over the T source tokens and [b, H, U, T] scores.

    ``platform`` ("cpu" or "tpu") is the compiler planned for: what JAX lists is adjusted by what that
    compiler was measured to keep (libtpu's buffer report; the per-layer slope and intercept of XLA:CPU's
    memory analysis; benchmarks/HISTORY.md "The recount" and "The CPU matrix within 15 %").

    Returns ``{"kept": all layers' kept residuals, "one_layer": the largest layer's backward working set,
    "loss": the loss's working set, "mask": the boolean [B, 1, T, S] attention mask}``, ints.
    """
    d = _sizes(run, platform)
    # tokens per device along the sequence; keys: the whole sequence (ring attention streams them,
    # all-gather holds them)
    Tl = d.T // d.cp
    blocks = [(d.n_layers, _block(d, Tl, d.T))]
    if d.U:  # encoder-decoder: decoder layers attend their own U tokens and the T source tokens
        blocks.append((d.dec_layers, _block(d, d.U // d.cp, d.U, cross_S=d.T)))
    kept = sum(n * blk["kept"] for n, blk in blocks)
    one_layer = max(blk["work"] for _, blk in blocks)
    mask = d.b * Tl * d.T  # the boolean [B, 1, T, S] attention mask, a constant of the scan
    return {"kept": int(kept), "one_layer": int(one_layer), "loss": int(_loss(d, Tl)), "mask": int(mask)}
