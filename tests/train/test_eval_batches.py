"""Evaluation sees every example: the last, partial batch is padded with zero-weight rows, so metrics over
``ArrayData.sequential`` batches equal metrics over the whole set at once."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxlm.data import packing
from jaxlm.models import bert, gpt2
from jaxlm.train.tasks import make_task

N, T = 10, 12


def _bert_data(rng):
    lengths = rng.integers(3, T + 1, N)
    valid = np.arange(T)[None, :] < lengths[:, None]
    tokens = np.where(valid, rng.integers(5, 512, (N, T)), 0).astype(np.int32)
    return {"tokens": tokens, "valid": valid, "labels": rng.integers(0, 2, N).astype(np.int32),
            "start": rng.integers(1, 3, N).astype(np.int32), "end": rng.integers(3, 4, N).astype(np.int32)}


def _gpt2_data(rng):
    tokens = rng.integers(0, 256, (N, T + 1)).astype(np.int32)
    weights = (rng.random((N, T)) < 0.8).astype(np.float32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}


def _sums(task, params, batches, cfg):
    tot = {}
    for b in batches:
        m = jax.device_get(task(params, {k: np.asarray(v) for k, v in b.items()}, None, cfg, train=False))
        for k, v in m.items():
            tot[k] = tot.get(k, 0.0) + float(v)
    return tot


def test_sequential_pads_the_last_batch_and_marks_padding():
    arrays = {"x": np.arange(N), "weights": np.ones((N, 3), np.float32)}
    batches = list(packing.ArrayData(arrays).sequential(4))
    assert [len(b["x"]) for b in batches] == [4, 4, 4]
    last = batches[-1]
    assert last["x"].tolist() == [8, 9, 0, 0]
    assert [b["example_weights"].tolist() for b in batches] == [[1, 1, 1, 1]] * 2 + [[1, 1, 0, 0]]
    assert np.concatenate([b["x"][b["example_weights"] > 0] for b in batches]).tolist() == list(range(N))
    assert len(list(packing.ArrayData(arrays).sequential(4, max_batches=2))) == 2
    small = list(packing.ArrayData(arrays).sequential(20))  # fewer examples than one batch
    assert len(small) == 1 and small[0]["example_weights"].sum() == N


@pytest.mark.parametrize("task_name,head", [("classification", "classifier"), ("span", "span")])
def test_metrics_over_padded_batches_equal_metrics_over_all_examples(task_name, head):
    cfg = bert.Config(vocab_size=512, max_len=T, d_model=32, n_heads=2, n_layers=1, d_ff=64, heads=(head,),
                      dropout=0.0, attn_dropout=0.0)
    params = bert.init(jax.random.key(0), cfg)
    data = _bert_data(np.random.default_rng(0))
    task = make_task(task_name)
    whole = _sums(task, params, [data], cfg)
    padded = _sums(task, params, packing.ArrayData(data).sequential(4), cfg)
    assert padded["weight"] == whole["weight"] == N
    assert padded["correct"] == whole["correct"]
    np.testing.assert_allclose(padded["loss"], whole["loss"], rtol=1e-5)
    # without the example weights the two padding rows would count
    unweighted = _sums(task, params, [{k: v for k, v in b.items() if k != "example_weights"}
                                      for b in packing.ArrayData(data).sequential(4)], cfg)
    assert unweighted["weight"] == N + 2


def test_token_weighted_metrics_over_padded_batches_equal_metrics_over_all_examples():
    cfg = gpt2.Config(vocab_size=256, max_len=T, d_model=32, n_heads=2, n_layers=1, d_ff=64, dropout=0.0,
                      attn_dropout=0.0)
    params = gpt2.init(jax.random.key(0), cfg)
    data = _gpt2_data(np.random.default_rng(0))
    task = make_task("causal_lm")
    whole = _sums(task, params, [data], cfg)
    padded = _sums(task, params, packing.ArrayData(data).sequential(4), cfg)
    assert padded["weight"] == whole["weight"] == data["weights"].sum()
    assert padded["correct"] == whole["correct"]
    np.testing.assert_allclose(padded["loss"], whole["loss"], rtol=1e-5)
