"""T5 span corruption (jaxlm.data.span_corruption) against an independent implementation written here:
inputs/targets built with plain Python from the noise mask, noise density and span lengths measured over
many draws against a numpy re-implementation of T5's segmentation, sentinels in order, inputs + targets
reconstruct the original, determinism from the key, and the train task wiring."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.data import span_corruption as sc

V, EOS = 1000, 2


def _reference(tokens: list[int], noise: list[bool], vocab: int, eos: int) -> tuple[list[int], list[int]]:
    """T5's inputs / targets from a noise mask, with Python loops: each noise span becomes one sentinel in the
    inputs; the targets are the noise spans, each after its sentinel; sentinels count down from vocab - 1."""
    inputs, targets, k = [], [], 0
    i = 0
    while i < len(tokens):
        if noise[i]:
            sentinel = vocab - 1 - k
            k += 1
            inputs.append(sentinel)
            targets.append(sentinel)
            while i < len(tokens) and noise[i]:
                targets.append(tokens[i])
                i += 1
        else:
            inputs.append(tokens[i])
            i += 1
    return inputs + [eos], targets + [eos]


def _reconstruct(inputs: list[int], targets: list[int], vocab: int, n_sentinels: int) -> list[int]:
    sentinels = set(range(vocab - n_sentinels, vocab))
    spans, cur = {}, None
    for t in targets[:-1]:
        if t in sentinels:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    out = []
    for t in inputs[:-1]:
        out += spans[t] if t in sentinels else [t]
    return out


def _np_segment_lengths(rng, n_items: int, n_segments: int) -> np.ndarray:
    """An independent uniformly random split of n_items into n_segments non-empty parts."""
    cuts = np.sort(rng.choice(np.arange(1, n_items), n_segments - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [n_items]]))


def test_lengths_follow_t5():
    n = sc.lengths(128)
    assert (n.noise, n.spans, n.inputs, n.targets) == (19, 6, 116, 26)
    n = sc.lengths(512)  # T5's own pre-training setting: 568 raw tokens -> 512 inputs in the released code
    assert (n.noise, n.spans) == (77, 26)
    assert sc.lengths(568).inputs == 568 - 85 + 28 + 1
    with pytest.raises(ValueError, match="noise_density"):
        sc.lengths(64, noise_density=0.0)
    with pytest.raises(ValueError, match="mean_span_length"):
        sc.lengths(64, mean_span_length=0.5)


def test_corrupt_equals_the_reference_on_fixed_inputs_and_reconstructs():
    B, L = 6, 40
    tokens = jax.random.randint(jax.random.key(3), (B, L), 5, 900)
    key = jax.random.key(7)
    inp, tgt = jax.jit(lambda k, t: sc.corrupt(k, t, vocab_size=V, eos_id=EOS))(key, tokens)
    n = sc.lengths(L)
    assert inp.shape == (B, n.inputs) and tgt.shape == (B, n.targets)
    keys = jax.random.split(key, B)  # corrupt() draws row b's mask from the b-th split key
    masks = np.asarray(jax.jit(jax.vmap(lambda k: sc.noise_mask(k, n)))(keys))
    for b in range(B):
        noise = masks[b].tolist()
        ref_in, ref_tgt = _reference(np.asarray(tokens[b]).tolist(), noise, V, EOS)
        assert np.asarray(inp[b]).tolist() == ref_in
        assert np.asarray(tgt[b]).tolist() == ref_tgt
        sentinels = [t for t in ref_tgt if t >= V - n.spans]
        assert sentinels == list(range(V - 1, V - 1 - n.spans, -1))  # in order, from the top
        assert [t for t in ref_in if t >= V - n.spans] == sentinels
        assert _reconstruct(ref_in, ref_tgt, V, n.spans) == np.asarray(tokens[b]).tolist()
    # deterministic from the key; another key gives another corruption
    run = jax.jit(lambda k, t: sc.corrupt(k, t, vocab_size=V, eos_id=EOS))
    np.testing.assert_array_equal(run(key, tokens)[0], inp)
    other = run(jax.random.key(8), tokens)
    assert not np.array_equal(other[0], inp)


def test_noise_density_and_span_lengths_over_many_draws():
    L, draws = 100, 3000
    n = sc.lengths(L)
    masks = np.asarray(jax.jit(jax.vmap(lambda k: sc.noise_mask(k, n)))(jax.random.split(jax.random.key(0), draws)))
    assert masks.shape == (draws, L)
    np.testing.assert_array_equal(masks.sum(1), n.noise)  # exactly round(0.15 L) noise tokens per draw
    assert abs(masks.mean() - 0.15) < 1e-9
    assert not masks[:, 0].any() and masks[:, -1].all()  # starts kept, ends with a noise span
    # spans and their lengths, measured
    starts = masks[:, 1:] & ~masks[:, :-1]
    np.testing.assert_array_equal(starts.sum(1), n.spans)
    lens = []
    for row in masks:
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
        lens += (edges[1::2] - edges[::2]).tolist()
    lens = np.asarray(lens)
    assert lens.min() >= 1 and abs(lens.mean() - 3.0) < 0.2  # 15 noise / 5 spans = 3
    # the distribution of span lengths matches an independent numpy segmentation
    rng = np.random.default_rng(0)
    ref = np.concatenate([_np_segment_lengths(rng, n.noise, n.spans) for _ in range(draws)])
    hist = np.bincount(lens, minlength=n.noise + 1) / len(lens)
    ref_hist = np.bincount(ref, minlength=n.noise + 1) / len(ref)
    assert np.abs(hist - ref_hist).max() < 0.02
    assert abs(lens.var() - ref.var()) < 0.15 * ref.var()
    # span positions vary across draws (every position but the first is noise in some draw)
    assert masks[:, 1:].any(0).all()


def test_span_corruption_task_trains_t5():
    from jaxlm.models import t5
    from jaxlm.train.tasks import count_bad_ids, make_task

    cfg = t5.PRESETS["t5-tiny"].config.replace(dropout=0.0, attn_dropout=0.0, ffn_dropout=0.0)
    params = t5.init(jax.random.key(0), cfg)
    task = make_task("span_corruption")
    batch = {"tokens": jax.random.randint(jax.random.key(1), (2, 30), 5, 400)}
    sums = jax.jit(lambda p, b, k: task(p, b, k, cfg, True))(params, batch, jax.random.key(2))
    n = sc.lengths(30)
    assert float(sums["weight"]) == 2 * n.targets
    assert np.isfinite(float(sums["loss"])) and int(count_bad_ids(task, batch, cfg.vocab_size)) == 0
    # the loss is the seq2seq loss of the corrupted pair, decoder input = [bos] + targets[:-1]
    src, tgt = sc.corrupt(jax.random.split(jax.random.key(2))[0], batch["tokens"], vocab_size=cfg.vocab_size,
                          eos_id=cfg.eos_id)
    tgt_in = jnp.concatenate([jnp.full((2, 1), cfg.bos_id), tgt[:, :-1]], 1)
    logp = jax.nn.log_softmax(jax.jit(t5.apply, static_argnums=3)(params, src, tgt_in, cfg))
    nll = -jnp.take_along_axis(logp, tgt[..., None], -1).sum()
    np.testing.assert_allclose(float(sums["nll"]), float(nll), rtol=1e-5)
