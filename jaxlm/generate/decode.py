"""Sampling-based generation: :func:`generate` (whole batch, one jit) and :func:`stream` (token by token).

Both are built from the same two traced functions:

- ``init``: prefill (prompt through the model, or encoder + BOS for the encoder-decoder) into a KV cache
  preallocated to its final length, then sample the first new token;
- ``body``: feed the last token (one cached step over per-layer weights split outside the loop, see
  :mod:`jaxlm.generate.kv_decode`), sample the next one.

:func:`generate` runs ``init`` and a ``lax.while_loop`` over ``body`` in one ``jax.jit`` (the loop ends
early once every row has hit a stop token); :func:`stream` jits ``init`` and ``body`` separately and calls
``body`` from Python so each token can be shown as soon as it exists.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.generate import inputs, kv_decode, sampling


@dataclass
class GenerateOutput:
    """What :func:`generate` returns.

    - ``tokens[b]``: the new tokens of prompt ``b``, *without* the stop token that ended it (if any);
    - ``stopped[b]``: whether a stop token ended it (else it ran to ``max_new_tokens``);
    - ``sequences[b]``: prompt + ``tokens[b]`` for decoders; ``[bos_id] + tokens[b]`` for the
      encoder-decoder (the target sequence);
    - ``logits``: when ``return_logits``, float32 [B, N, V] model logits (before temperature/filtering) that
      chose new token ``n`` of each row (N = steps run; entries after a row stopped are meaningless).
    """

    tokens: list[list[int]]
    sequences: list[list[int]]
    stopped: list[bool]
    logits: np.ndarray | None = None


def _state_init(params, tokens, lengths, key, temperature, top_p, stop, *, cfg, sampler, n_new, cache_len,
                return_logits):
    """Prefill and the first new token -> the loop state (a dict of arrays). ``stop`` [n] ids padded with -1."""
    logits, cache, ctx = kv_decode.prefill(params, cfg, tokens, lengths, cache_len)
    B = tokens.shape[0]
    tok = sampling.sample(logits, jax.random.fold_in(key, 0), sampler, temperature, top_p)
    state = {
        "i": jnp.array(1, jnp.int32),  # tokens produced so far
        "tok": tok,  # [B] the last token
        "done": jnp.isin(tok, stop),  # [B]; stop: [n] ids padded with -1
        "out": jnp.full((B, n_new), cfg.pad_id, jnp.int32).at[:, 0].set(tok),  # [B, N]
        "cache": cache, "ctx": ctx, "key": key, "temperature": temperature, "top_p": top_p, "stop": stop,
    }
    if return_logits:
        state["logits"] = jnp.zeros((B, n_new, cfg.vocab_size), jnp.float32).at[:, 0].set(logits)
    return state


def _state_body(params, layers, state, *, cfg, sampler):
    """One decode step: feed the last token, sample token ``i``, mark rows that hit a stop id."""
    i = state["i"]
    logits, cache = kv_decode.step(params, layers, cfg, state["tok"], i - 1, state["cache"], state["ctx"])
    tok = sampling.sample(logits, jax.random.fold_in(state["key"], i), sampler, state["temperature"],
                          state["top_p"])
    tok = jnp.where(state["done"], cfg.pad_id, tok)  # finished rows emit padding
    new = dict(state, i=i + 1, tok=tok, cache=cache,
               out=jax.lax.dynamic_update_slice_in_dim(state["out"], tok[:, None], i, axis=1))
    new["done"] = state["done"] | jnp.isin(tok, state["stop"])
    if "logits" in state:
        new["logits"] = jax.lax.dynamic_update_slice_in_dim(state["logits"], logits[:, None], i, axis=1)
    return new


# compiled programs memoised per static configuration, as jax.jit's own cache is: they hold no data
@functools.lru_cache(maxsize=64)
def _compiled(cfg, sampler: sampling.Sampler, n_new: int, cache_len: int, return_logits: bool):
    """Jitted (run, init, body) for one static setting; cached so repeated calls reuse the compilation."""
    init = functools.partial(_state_init, cfg=cfg, sampler=sampler, n_new=n_new, cache_len=cache_len,
                             return_logits=return_logits)
    body = functools.partial(_state_body, cfg=cfg, sampler=sampler)

    def run(params, layers, tokens, lengths, key, temperature, top_p, stop):
        state = init(params, tokens, lengths, key, temperature, top_p, stop)
        state = jax.lax.while_loop(lambda s: (s["i"] < n_new) & ~jnp.all(s["done"]),
                                   lambda s: body(params, layers, s), state)
        return state["out"], state["i"], state.get("logits")

    return jax.jit(run), jax.jit(init), jax.jit(body, donate_argnums=2)


def _setup(params, cfg, prompts, max_new_tokens, temperature, top_k, top_p, greedy, stop_tokens, max_len, seed,
           vocab_limit):
    batch = inputs.prepare(prompts, cfg, max_new_tokens)
    sampler = sampling.make(cfg, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                            vocab_limit=vocab_limit)
    inputs.check_seed(seed)
    stop = inputs.stop_ids(cfg, stop_tokens)
    S = inputs.cache_len(batch, cfg, max_new_tokens, max_len)
    dyn = (jnp.float32(temperature if temperature else 1.0), jnp.float32(1.0 if top_p is None else top_p))
    return batch, sampler, stop, S, dyn


def generate(
    params: dict,
    cfg,
    prompts: Sequence[Sequence[int]] | np.ndarray | jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    stop_tokens: Sequence[int] | int = (),
    seed: int = 0,
    max_len: int | None = None,
    return_logits: bool = False,
    layers: list | None = None,
    vocab_limit: int | None = None,
) -> GenerateOutput:
    """Generate up to ``max_new_tokens`` tokens for every prompt with a KV cache, in one ``jax.jit``.

    ``prompts``: a list of token-id lists (lengths may differ; they are left-padded and masked, each row
    keeps its own positions) or an int array [B, T]. For the encoder-decoder (``transformer``) the prompts
    are *source* sequences: the encoder runs once, cross-attention keys/values are computed once, and
    decoding starts from ``cfg.bos_id`` and stops at ``cfg.eos_id``.

    Sampling: ``greedy=True`` (or ``temperature=0``) takes the argmax; otherwise tokens are drawn from
    softmax(logits / temperature) restricted to the ``top_k`` most likely tokens and then to the nucleus of
    mass ``top_p``. ``seed`` makes sampling reproducible. A row ends at any id in ``stop_tokens``.
    ``max_len`` (cache slots) may be raised above what the prompt needs so different prompt lengths reuse one
    compiled program. ``layers``: :func:`jaxlm.generate.kv_decode.split_layers` of ``params``, to reuse
    across calls (made on each call when None). ``vocab_limit``: sample only ids below it (give the
    tokenizer's number of ids when the model's vocab_size is larger: the extra ids decode to nothing).
    Returns a :class:`GenerateOutput`.
    """
    batch, sampler, stop, S, (temp, tp) = _setup(params, cfg, prompts, max_new_tokens, temperature, top_k,
                                                 top_p, greedy, stop_tokens, max_len, seed, vocab_limit)
    run, *_ = _compiled(cfg, sampler, int(max_new_tokens), S, bool(return_logits))
    if layers is None:
        layers = kv_decode.split_layers(params, cfg)
    out, n, logits = run(params, layers, jnp.asarray(batch.tokens), jnp.asarray(batch.lengths),
                         jax.random.key(seed), temp, tp, inputs.stop_array(stop))
    out, n = np.asarray(out), int(n)
    tokens, stopped = [], []
    for row in out[:, :n]:
        hits = np.flatnonzero(np.isin(row, stop)) if stop else []
        end = int(hits[0]) if len(hits) else n
        tokens.append(row[:end].tolist())
        stopped.append(bool(len(hits)))
    if batch.left_padded:
        prefix = [batch.tokens[b, batch.tokens.shape[1] - L:].tolist() for b, L in enumerate(batch.lengths)]
    else:
        prefix = [[cfg.bos_id]] * len(tokens)
    return GenerateOutput(tokens=tokens, sequences=[p + t for p, t in zip(prefix, tokens)], stopped=stopped,
                          logits=None if logits is None else np.asarray(logits)[:, :n])


def stream(
    params: dict,
    cfg,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    stop_tokens: Sequence[int] | int = (),
    seed: int = 0,
    max_len: int | None = None,
    layers: list | None = None,
    vocab_limit: int | None = None,
) -> Iterator[int]:
    """Yield the new token ids of one ``prompt`` (a list of ids) as they are produced; stops before a stop
    token (not yielded) or after ``max_new_tokens``. Uses the same prefill and step functions as
    :func:`generate`, so with the same arguments and seed it yields exactly ``generate(...).tokens[0]``."""
    if not isinstance(prompt, Sequence) or (len(prompt) and not isinstance(prompt[0], int | np.integer)):
        arr = np.asarray(prompt)
        if arr.ndim != 1:
            raise ValueError(f"stream takes one prompt (a flat list of token ids), got shape {arr.shape}; "
                             f"use generate() for a batch.")
        prompt = arr.tolist()
    batch, sampler, stop, S, (temp, tp) = _setup(params, cfg, [list(prompt)], max_new_tokens, temperature,
                                                 top_k, top_p, greedy, stop_tokens, max_len, seed, vocab_limit)
    _, init, body = _compiled(cfg, sampler, int(max_new_tokens), S, False)
    if layers is None:  # per-layer weights, split outside the per-token step
        layers = kv_decode.split_layers(params, cfg)
    state = init(params, jnp.asarray(batch.tokens), jnp.asarray(batch.lengths), jax.random.key(seed), temp, tp,
                 inputs.stop_array(stop))
    for i in range(int(max_new_tokens)):
        if i:
            state = body(params, layers, state)
        tok = int(state["tok"][0])
        if tok in stop:
            return
        yield tok
