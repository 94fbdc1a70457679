"""Beam search with the GNMT length penalty (Wu et al. 2016, "Google's Neural Machine Translation System").

A hypothesis Y of |Y| new tokens (the stop token counted when it ends Y) scores

    score(Y) = log P(Y | prompt) / lp(Y),   lp(Y) = ((5 + |Y|) / 6) ** alpha

(``alpha = 0``: plain log-probability, which favours short outputs; larger ``alpha`` favours longer ones).

Each step extends the W alive beams by every token, keeps the 2W best extensions (so at least W of them do
not end in a stop token), moves those ending in a stop token to the finished set (the W best finished are
kept) and continues with the W best others. The search ends after ``max_new_tokens`` steps (alive beams then
join the finished set) or as soon as no alive beam can still beat the worst of W finished ones. With W as
large as the number of possible continuations nothing is ever pruned, so the result is exact (tested
against brute-force enumeration).

Prefill, the loop (``lax.while_loop``) and the per-step beam reordering of the KV cache run in one jit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.generate import inputs, kv_decode, sampling

_NEG = -1e9  # log-probability of an empty / impossible beam (finite: -inf - -inf would give NaN)


@dataclass
class BeamOutput:
    """What :func:`beam_search` returns (per prompt ``b``, beams sorted best first).

    - ``tokens[b]``: the best hypothesis (new tokens, without its stop token);
    - ``beams[b][w]``, ``scores[b][w]`` (length-penalised), ``log_probs[b][w]`` (sum of token log-probs,
      stop token included), ``stopped[b][w]`` (ended by a stop token, else by ``max_new_tokens``).
    """

    tokens: list[list[int]]
    beams: list[list[list[int]]]
    scores: list[list[float]]
    log_probs: list[list[float]]
    stopped: list[list[bool]]
    steps: int = 0  # search steps run (< max_new_tokens when the search could stop early)


def length_penalty(length: jax.Array | int, alpha: jax.Array | float) -> jax.Array:
    """GNMT lp = ((5 + length) / 6) ** alpha."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _run(params, layers, tokens, lengths, alpha, stop_arr, *, cfg, W, N, cache_len, early_stop=True,
         vocab_limit=None):
    B, V = tokens.shape[0], cfg.vocab_size
    logits, cache, ctx = kv_decode.prefill(params, cfg, tokens, lengths, cache_len)
    cache, ctx = kv_decode.repeat(cache, ctx, W)  # [B] -> [B * W]: every beam starts from the prompt
    rows = jnp.arange(B)[:, None] * W  # [B, 1] first flat row of each example
    take = jax.vmap(lambda a, i: a[i])  # per-example gather along the beam axis

    def body(s):
        i = s["i"]
        logits = sampling.restrict(s["logits"].astype(jnp.float32), vocab_limit)
        lp = jax.nn.log_softmax(logits, axis=-1).reshape(B, W, V)
        cand = s["alive_lp"][:, :, None] + lp  # [B, W, V]
        top_lp, top_idx = jax.lax.top_k(cand.reshape(B, W * V), min(2 * W, W * V))  # [B, 2W]
        origin, tok = top_idx // V, top_idx % V
        seq = jax.lax.dynamic_update_slice_in_dim(take(s["alive_seq"], origin), tok[:, :, None], i, axis=2)
        valid = top_lp > _NEG / 2
        is_stop = jnp.isin(tok, stop_arr)  # stop_arr: ids padded with -1
        # finished: keep the W best of (previous finished, new hypotheses ending in a stop token)
        f_score = jnp.where(valid & is_stop, top_lp / length_penalty(i + 1, alpha), _NEG)
        all_score = jnp.concatenate([s["fin_score"], f_score], 1)
        fin_score, f_idx = jax.lax.top_k(all_score, W)
        fin = {"fin_score": fin_score,
               "fin_seq": take(jnp.concatenate([s["fin_seq"], seq], 1), f_idx),
               "fin_lp": take(jnp.concatenate([s["fin_lp"], top_lp], 1), f_idx),
               "fin_len": take(jnp.concatenate([s["fin_len"], jnp.full_like(tok, i + 1)], 1), f_idx)}
        # alive: the W best extensions that did not stop
        alive_lp, a_idx = jax.lax.top_k(jnp.where(is_stop | ~valid, _NEG, top_lp), W)
        alive_seq, nxt = take(seq, a_idx), take(tok, a_idx)  # [B, W, N], [B, W]
        cache = kv_decode.reorder_beams(s["cache"], (rows + take(origin, a_idx)).reshape(-1))
        logits, cache = jax.lax.cond(
            i + 1 < N, lambda c: kv_decode.step(params, layers, cfg, nxt.reshape(-1), i, c, ctx),
            lambda c: (s["logits"], c), cache)
        return dict(fin, i=i + 1, logits=logits, cache=cache, alive_lp=alive_lp, alive_seq=alive_seq)

    def cond(s):
        # stop early once W hypotheses are finished and no alive beam can beat the worst of them: future
        # log-probs only fall, so an alive beam's best final score is lp / lp(len) at len = i + 1 or N
        best = s["alive_lp"][:, 0]
        bound = jnp.maximum(best / length_penalty(s["i"] + 1, alpha), best / length_penalty(N, alpha))
        settled = (s["fin_score"][:, -1] > _NEG / 2) & (bound < s["fin_score"][:, -1]) | (best <= _NEG / 2)
        return (s["i"] < N) & ~(jnp.all(settled) & early_stop)

    state = {
        "i": jnp.array(0, jnp.int32), "logits": jnp.repeat(logits, W, axis=0), "cache": cache,
        "alive_lp": jnp.where(jnp.arange(W) == 0, 0.0, _NEG)[None].repeat(B, 0).astype(jnp.float32),
        "alive_seq": jnp.full((B, W, N), cfg.pad_id, jnp.int32),
        "fin_score": jnp.full((B, W), _NEG, jnp.float32), "fin_lp": jnp.full((B, W), _NEG, jnp.float32),
        "fin_seq": jnp.full((B, W, N), cfg.pad_id, jnp.int32), "fin_len": jnp.zeros((B, W), jnp.int32),
    }
    s = jax.lax.while_loop(cond, body, state)
    # beams still alive at the end are complete hypotheses of length i (ended by max_new_tokens)
    a_valid = s["alive_lp"] > _NEG / 2
    a_score = jnp.where(a_valid, s["alive_lp"] / length_penalty(s["i"], alpha), _NEG)
    score, idx = jax.lax.top_k(jnp.concatenate([s["fin_score"], a_score], 1), W)
    cat = lambda f, a: take(jnp.concatenate([f, a], 1), idx)  # noqa: E731
    return (score, cat(s["fin_seq"], s["alive_seq"]), cat(s["fin_lp"], s["alive_lp"]),
            cat(s["fin_len"], jnp.full_like(s["fin_len"], s["i"])),
            cat(jnp.ones_like(a_valid), jnp.zeros_like(a_valid)), s["i"])


# compiled programs memoised per static configuration, as jax.jit's own cache is: they hold no data
@functools.lru_cache(maxsize=32)
def _compiled(cfg, W: int, N: int, cache_len: int, early_stop: bool = True, vocab_limit: int | None = None):
    return jax.jit(functools.partial(_run, cfg=cfg, W=W, N=N, cache_len=cache_len, early_stop=early_stop,
                                     vocab_limit=vocab_limit))


def beam_search(
    params: dict,
    cfg,
    prompts: Sequence[Sequence[int]] | np.ndarray | jax.Array,
    *,
    beam_size: int,
    max_new_tokens: int,
    length_penalty: float = 0.6,
    eos_id: int | None = None,
    stop_tokens: Sequence[int] | int = (),
    max_len: int | None = None,
    layers: list | None = None,
    vocab_limit: int | None = None,
    _early_stop: bool = True,
) -> BeamOutput:
    """Beam search over ``beam_size`` beams per prompt; see the module docstring for the score.

    ``prompts`` as in :func:`jaxlm.generate.generate` (source sentences for the encoder-decoder, where
    ``cfg.eos_id`` always ends a hypothesis). ``eos_id`` / ``stop_tokens`` end hypotheses of decoders (none
    by default: every hypothesis then has ``max_new_tokens`` tokens). ``length_penalty`` is GNMT's alpha
    (0.6 in the GNMT paper). ``layers`` and ``vocab_limit`` as in :func:`jaxlm.generate.generate`. Returns
    a :class:`BeamOutput`.
    """
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size={beam_size!r} must be a positive integer (1 = greedy search).")
    if not isinstance(length_penalty, int | float) or isinstance(length_penalty, bool) \
            or not 0 <= length_penalty < math.inf:
        raise ValueError(f"length_penalty={length_penalty!r} must be a number >= 0 (GNMT alpha; 0 = none, "
                         f"0.6 in the GNMT paper).")
    batch = inputs.prepare(prompts, cfg, max_new_tokens)
    stop = inputs.stop_ids(cfg, stop_tokens, eos_id)
    S = inputs.cache_len(batch, cfg, max_new_tokens, max_len)
    run = _compiled(cfg, int(beam_size), int(max_new_tokens), S, _early_stop,
                    sampling.check_vocab_limit(cfg, vocab_limit))
    if layers is None:
        layers = kv_decode.split_layers(params, cfg)
    res = run(params, layers, jnp.asarray(batch.tokens), jnp.asarray(batch.lengths),
              jnp.float32(length_penalty), inputs.stop_array(stop))
    score, seq, lp, length, stopped, steps = (np.asarray(a) for a in res)
    out = BeamOutput([], [], [], [], [], steps=int(steps))
    for b in range(score.shape[0]):
        keep = score[b] > _NEG / 2
        beams = [seq[b, w, : length[b, w] - int(stopped[b, w])].tolist() for w in np.flatnonzero(keep)]
        out.beams.append(beams)
        out.tokens.append(beams[0])
        out.scores.append(score[b, keep].tolist())
        out.log_probs.append(lp[b, keep].tolist())
        out.stopped.append(stopped[b, keep].astype(bool).tolist())
    return out
