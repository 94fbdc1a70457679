"""jaxlm.generate: cached decoding == full recompute, sampling rules, stop tokens, batching, beam search
(against brute-force enumeration), streaming and error messages. Tiny presets, fp32."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.generate import beam_search, generate, stream
from jaxlm.models import get

FAMILIES = ["gpt2-tiny", "llama-tiny", "transformer-tiny"]
PROMPTS = [[5, 17, 3], [9, 1, 44, 20, 7, 301, 12]]  # different lengths: left padding (right for sources)
N_NEW = 6


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    mod, cfg = get(request.param)
    cfg = cfg.replace(dropout=0.0, attn_dropout=0.0)
    return mod, cfg, mod.init(jax.random.key(0), cfg)


@pytest.fixture(scope="module")
def gpt2():
    mod, cfg = get("gpt2-tiny")
    cfg = cfg.replace(dropout=0.0, attn_dropout=0.0)  # the same config as `model`: compilations are shared
    return mod, cfg, mod.init(jax.random.key(1), cfg)


def _full_logits(mod, cfg, params, prompt, new):
    """Logits [len(new), V] for each new token, recomputed from scratch (no cache) over the whole sequence."""
    if type(cfg).family == "transformer":
        tgt = jnp.asarray([[cfg.bos_id, *new[:-1]]])
        return np.asarray(mod.apply(params, jnp.asarray([prompt]), tgt, cfg)[0])
    seq = jnp.asarray([[*prompt, *new[:-1]]])
    return np.asarray(mod.apply(params, seq, cfg)[0, len(prompt) - 1:])


def test_cached_decoding_matches_full_recompute_and_batching(model):
    """Every step's cached logits equal a full forward pass (<= 1e-5); a padded batch equals each prompt
    alone; greedy picks the argmax and is deterministic."""
    mod, cfg, params = model
    out = generate(params, cfg, PROMPTS, max_new_tokens=N_NEW, greedy=True, return_logits=True)
    assert out.logits.shape == (2, N_NEW, cfg.vocab_size)
    for b, prompt in enumerate(PROMPTS):
        new = out.tokens[b]
        assert len(new) == N_NEW and not out.stopped[b]
        ref = _full_logits(mod, cfg, params, prompt, new)
        np.testing.assert_allclose(out.logits[b], ref, atol=1e-5, rtol=1e-5)
        assert new == np.argmax(out.logits[b], -1).tolist()
    # the short prompt was padded in the batch; alone it is not
    alone = generate(params, cfg, PROMPTS[:1], max_new_tokens=N_NEW, greedy=True, return_logits=True)
    assert alone.tokens[0] == out.tokens[0]
    np.testing.assert_allclose(alone.logits[0], out.logits[0], atol=1e-5, rtol=1e-5)
    if type(cfg).family == "transformer":
        assert out.sequences[0] == [cfg.bos_id, *out.tokens[0]]
    else:
        assert out.sequences[1] == PROMPTS[1] + out.tokens[1]
    again = generate(params, cfg, PROMPTS, max_new_tokens=N_NEW, greedy=True, return_logits=True)
    assert again.tokens == out.tokens
    # streaming shares the step function: same tokens, one at a time
    assert list(stream(params, cfg, PROMPTS[1], max_new_tokens=N_NEW, greedy=True)) == out.tokens[1]


def test_new_params_are_not_served_from_the_weight_split_cache(gpt2):
    """Other params (same config, same shapes, so the same compiled program) must give their own results:
    nothing derived from the first params (such as their per-layer weight split) is reused."""
    mod, cfg, params = gpt2
    other = mod.init(jax.random.key(7), cfg)
    a = generate(params, cfg, PROMPTS, max_new_tokens=N_NEW, greedy=True, return_logits=True)
    b = generate(other, cfg, PROMPTS, max_new_tokens=N_NEW, greedy=True, return_logits=True)
    np.testing.assert_allclose(b.logits[1], _full_logits(mod, cfg, other, PROMPTS[1], b.tokens[1]), atol=1e-5)
    assert not np.allclose(a.logits, b.logits)


def test_general_attention_fallback_matches_full_recompute():
    """ALiBi is not handled by the one-token decode attention: the step falls back to the model's attention
    on the converted cache, and must still equal a full recompute, padded rows included."""
    mod, cfg = get("gpt2-tiny")
    cfg = cfg.replace(pos_emb="alibi", dropout=0.0, attn_dropout=0.0)
    params = mod.init(jax.random.key(3), cfg)
    out = generate(params, cfg, PROMPTS, max_new_tokens=4, greedy=True, return_logits=True)  # left-padded
    for b, prompt in enumerate(PROMPTS):
        ref = _full_logits(mod, cfg, params, prompt, out.tokens[b])
        np.testing.assert_allclose(out.logits[b], ref, atol=1e-5, rtol=1e-5)


def test_sampling_is_reproducible_and_seed_dependent(gpt2):
    mod, cfg, params = gpt2
    kw = dict(max_new_tokens=8, temperature=1.0, top_k=50)
    a = generate(params, cfg, PROMPTS, seed=3, **kw).tokens
    assert generate(params, cfg, PROMPTS, seed=3, **kw).tokens == a
    assert generate(params, cfg, PROMPTS, seed=4, **kw).tokens != a
    # a larger cache (to share one compilation across prompt lengths) changes nothing
    assert generate(params, cfg, PROMPTS, seed=3, max_len=40, **kw).tokens == a


def _tv(samples, probs, n_bins=10):
    """Total variation between sample frequencies and ``probs`` over the ``n_bins`` most likely tokens and
    one bin for all others (fine enough to see a wrong distribution, coarse enough that 4096 samples
    estimate it to about 0.02)."""
    freq = np.bincount(samples, minlength=len(probs)) / len(samples)
    top = np.argsort(-probs)[:n_bins]
    f = np.append(freq[top], 1 - freq[top].sum())
    p = np.append(probs[top], 1 - probs[top].sum())
    return 0.5 * np.abs(f - p).sum()


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("rule", [dict(top_k=5), dict(top_p=0.6), dict()], ids=["top_k", "top_p", "plain"])
def test_samples_follow_the_filtered_model_distribution(gpt2, rule):
    """Many rows with the same prompt: step 0 has one distribution, so the sample frequencies are compared
    with the filtered, renormalised model distribution; at every step no row samples outside the allowed
    set computed from that row's own logits."""
    mod, cfg, params = gpt2
    T, B = 0.2, 4096
    out = generate(params, cfg, [PROMPTS[0]] * B, max_new_tokens=3, temperature=T, seed=0, return_logits=True,
                   **rule)
    toks = np.array(out.tokens)  # [B, 3]
    z = out.logits / T  # [B, 3, V]
    allowed = np.ones_like(z, bool)
    if "top_k" in rule:
        kth = np.sort(z, -1)[..., -rule["top_k"]][..., None]
        allowed = z >= kth
    if "top_p" in rule:
        order = np.argsort(-z, -1)
        p_sorted = np.take_along_axis(_softmax(z), order, -1)
        keep_sorted = np.cumsum(p_sorted, -1) - p_sorted < rule["top_p"]
        allowed = np.zeros_like(z, bool)
        np.put_along_axis(allowed, order, keep_sorted, -1)
    chosen = np.take_along_axis(allowed, toks[..., None], -1)[..., 0]
    assert chosen.all(), "a token outside the allowed set was sampled"
    target = np.where(allowed[0, 0], _softmax(z[0, 0]), 0.0)
    target /= target.sum()
    n_allowed = int(allowed[0, 0].sum())
    assert (n_allowed == cfg.vocab_size) == (not rule) and n_allowed > 1
    assert len(np.unique(toks[:, 0])) > 1
    assert _tv(toks[:, 0], target) < 0.05


def test_stop_tokens_end_rows(gpt2):
    mod, cfg, params = gpt2
    free = generate(params, cfg, PROMPTS, max_new_tokens=N_NEW, greedy=True, return_logits=True)
    stop = free.tokens[0][2]
    j0 = free.tokens[0].index(stop)
    out = generate(params, cfg, PROMPTS, max_new_tokens=N_NEW, greedy=True, stop_tokens=[stop],
                   return_logits=True)
    assert out.tokens[0] == free.tokens[0][:j0] and out.stopped[0]
    if stop in free.tokens[1]:
        assert out.tokens[1] == free.tokens[1][: free.tokens[1].index(stop)]
    else:
        assert out.tokens[1] == free.tokens[1] and not out.stopped[1]
    assert list(stream(params, cfg, PROMPTS[0], max_new_tokens=N_NEW, greedy=True, stop_tokens=stop)) == \
        free.tokens[0][:j0]
    # once every row has stopped the loop ends: only as many steps as the last row needed were run
    both = {free.tokens[0][0], free.tokens[1][0]}
    early = generate(params, cfg, PROMPTS, max_new_tokens=N_NEW, greedy=True, stop_tokens=both,
                     return_logits=True)
    assert early.tokens == [[], []] and early.stopped == [True, True] and early.logits.shape[1] == 1


# ---------------------------------------------------------------------------------------------- beam search
def _brute_force(mod, cfg, params, prompt, V, N, eos, alpha):
    """Every hypothesis of <= N new tokens (ending at the first ``eos`` or after N) -> (score, log-prob)."""
    seqs = np.array(list(itertools.product(range(V), repeat=N)))
    if type(cfg).family == "transformer":
        tgt = np.concatenate([np.full((len(seqs), 1), cfg.bos_id), seqs[:, :-1]], 1)
        logits = mod.apply(params, jnp.asarray(np.tile(prompt, (len(seqs), 1))), jnp.asarray(tgt), cfg)
    else:
        full = np.concatenate([np.tile(prompt, (len(seqs), 1)), seqs], 1)
        logits = mod.apply(params, jnp.asarray(full), cfg)[:, len(prompt) - 1: len(prompt) - 1 + N]
    lp = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, -1)), seqs[:, :, None], 2)[..., 0]
    hyps = {}
    for s, l in zip(seqs.tolist(), lp):
        k = s.index(eos) + 1 if eos in s else N
        hyps[tuple(s[:k])] = (float(l[:k].sum()) / ((5 + k) / 6) ** alpha, float(l[:k].sum()))
    return sorted(hyps.items(), key=lambda kv: -kv[1][0])


def _check_against_brute_force(out, b, ranked, eos):
    got = [tuple(h + [eos] * s) for h, s in zip(out.beams[b], out.stopped[b])]
    assert got == [h for h, _ in ranked]  # the whole ranking, not just the winner
    np.testing.assert_allclose(out.scores[b], [s for _, (s, _) in ranked], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.log_probs[b], [lp for _, (_, lp) in ranked], rtol=1e-5, atol=1e-5)


def test_beam_search_equals_brute_force_and_length_penalty():
    """vocab 8, 3 new tokens, beam 512 = 8^3: nothing is pruned, so beam search must return exactly the
    brute-force ranking of all 400 hypotheses, for two prompts of different lengths in one batch and for two
    length penalties; a large alpha turns the winner from an immediate stop into a 3-token hypothesis."""
    mod, cfg = get("gpt2-tiny")
    cfg = cfg.replace(vocab_size=8)
    params = mod.init(jax.random.key(0), cfg)
    V, N, eos, prompts = 8, 3, 3, [[1, 2, 3], [4, 6]]
    winners = []
    for alpha in (0.0, 10.0):
        out = beam_search(params, cfg, prompts, beam_size=V**N, max_new_tokens=N, length_penalty=alpha,
                          eos_id=eos)
        for b, prompt in enumerate(prompts):
            _check_against_brute_force(out, b, _brute_force(mod, cfg, params, prompt, V, N, eos, alpha), eos)
        winners.append(out.tokens[0])
    assert winners[0] == [] and len(winners[1]) == N


def test_beam_search_encoder_decoder_brute_force():
    mod, cfg = get("transformer-tiny")
    cfg = cfg.replace(vocab_size=8, dropout=0.0)
    params = mod.init(jax.random.key(2), cfg)
    V, N, src = 8, 3, [4, 5, 6, 7]
    out = beam_search(params, cfg, [src], beam_size=V**N, max_new_tokens=N, length_penalty=0.6)
    _check_against_brute_force(out, 0, _brute_force(mod, cfg, params, src, V, N, cfg.eos_id, 0.6), cfg.eos_id)


def test_beam_search_early_stop_changes_nothing():
    """Once W hypotheses are finished and no alive beam can beat them the search stops; it must return what
    the full-length search returns (a model that often emits its stop token, so the early exit happens)."""
    mod, cfg = get("gpt2-tiny")
    cfg = cfg.replace(vocab_size=8)
    params = mod.init(jax.random.key(0), cfg)
    kw = dict(beam_size=3, max_new_tokens=8, length_penalty=0.6, eos_id=3)
    early = beam_search(params, cfg, [[1, 2, 3], [4, 6]], **kw)
    full = beam_search(params, cfg, [[1, 2, 3], [4, 6]], _early_stop=False, **kw)
    assert early.steps < full.steps == 8
    assert early.beams == full.beams and early.stopped == full.stopped
    np.testing.assert_allclose(early.scores, full.scores, rtol=1e-6)


def test_beam_of_one_is_greedy(gpt2):
    mod, cfg, params = gpt2
    greedy = generate(params, cfg, PROMPTS, max_new_tokens=N_NEW, greedy=True).tokens
    assert beam_search(params, cfg, PROMPTS, beam_size=1, max_new_tokens=N_NEW).tokens == greedy


# --------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(prompts=[]), "prompts is empty"),
    (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
    (dict(prompts=[[1, 512]]), "token id 512, outside \\[0, 512\\)"),
    (dict(prompts=[[-1, 2]]), "token id -1"),
    (dict(prompts="hello"), "encode"),
    (dict(prompts=[list(range(129))]), "longer than the model's context max_len=128"),
    (dict(prompts=[list(range(120))], max_new_tokens=20), "lower max_new_tokens to 8"),
    (dict(max_new_tokens=0), "max_new_tokens=0 must be a positive integer"),
    (dict(top_p=0.0), "top_p=0.0 must be in \\(0, 1\\]"),
    (dict(top_p=1.5), "top_p=1.5 must be in \\(0, 1\\]"),
    (dict(temperature=-1.0), "temperature=-1.0 must be >= 0"),
    (dict(top_k=0), "top_k=0 must be a positive integer"),
    (dict(stop_tokens=[600]), "stop_tokens contain token id 600"),
    (dict(max_len=3), "max_len=3 cannot hold"),
])
def test_bad_input_errors_name_the_fix(gpt2, kwargs, match):
    mod, cfg, params = gpt2
    args = dict(prompts=[[1, 2, 3]], max_new_tokens=4) | kwargs
    with pytest.raises(ValueError, match=match):
        generate(params, cfg, args.pop("prompts"), **args)


def test_beam_bad_input(gpt2):
    mod, cfg, params = gpt2
    with pytest.raises(ValueError, match="needs a model with a causal decoder"):
        generate({}, get("bert-tiny")[1], [[1, 2]], max_new_tokens=2)
    with pytest.raises(ValueError, match="beam_size=0 must be a positive integer"):
        beam_search(params, cfg, [[1]], beam_size=0, max_new_tokens=2)
    with pytest.raises(ValueError, match="length_penalty=-1 must be a number >= 0"):
        beam_search(params, cfg, [[1]], beam_size=2, max_new_tokens=2, length_penalty=-1)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        beam_search(params, cfg, [[]], beam_size=2, max_new_tokens=2)
