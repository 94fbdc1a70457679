"""Mixtral (sparse mixture of experts): the shared decoder-LM checks on ``mixtral-tiny``, the 8x7B count
against transformers, active-parameter FLOP accounting, the router losses in the training objective and its
metrics, bad settings, and `jaxlm train` / `generate` / `convert` on a tiny Mixtral."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _lm_checks import *  # noqa: F403  (the shared decoder-LM tests)
from _lm_checks import FWD, LM, make_lm

from jaxlm import models
from jaxlm import params as P
from jaxlm.config import ConfigError
from jaxlm.models import mixtral
from jaxlm.nn import moe
from jaxlm.train import step, tasks


@pytest.fixture(scope="module")
def lm() -> LM:
    return make_lm(mixtral, mixtral.PRESETS["mixtral-tiny"].config)


def test_mixtral_layout_and_active_parameters():
    cfg = mixtral.PRESETS["mixtral-8x7b"].config
    spec = mixtral.spec(cfg)
    assert spec["layers"]["mlp"]["experts"]["wi_0"]["w"].shape == (32, 8, 4096, 14336)  # [L, E, D, F]
    assert spec["layers"]["mlp"]["router"]["w"].shape == (32, 4096, 8)
    assert P.count(spec) == 46_702_792_704
    experts = 32 * 8 * 3 * 4096 * 14336
    assert mixtral.active_params(cfg) == 46_702_792_704 - experts + experts // 4 == 12_879_925_248
    # the FLOP estimate of a run counts active parameters; dense families count all of theirs
    assert models.active_params(cfg) == 12_879_925_248
    _, llama_cfg = models.get("llama-tiny")
    assert models.active_params(llama_cfg) == models.REGISTRY["llama-tiny"][1].n_params


def test_mixtral_8x7b_count_equals_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        m = transformers.MixtralForCausalLM(transformers.MixtralConfig())
    assert m.num_parameters() == mixtral.PRESETS["mixtral-8x7b"].n_params


def test_mixtral_returns_router_statistics(lm: LM):
    logits, aux = mixtral.apply(lm.params, lm.tokens, lm.cfg, return_aux=True)
    np.testing.assert_allclose(logits, lm.logits, atol=1e-5)
    m = aux["moe"]
    assert m["load"].shape == (8,)
    np.testing.assert_allclose(float(jnp.sum(m["load"])), 2.0, atol=1e-5)  # top-2: every token twice
    assert float(m["aux_loss"]) >= 2.0 - 1e-5  # E * sum f P >= k, equality only for uniform routing
    np.testing.assert_allclose(float(m["loss"]), 0.01 * float(m["aux_loss"]), rtol=1e-6)
    assert int(m["dropped"]) == 0


def test_training_objective_adds_the_weighted_router_losses(lm: LM):
    cfg = lm.cfg.replace(aux_loss_weight=0.5, router_z_loss_weight=0.1)
    x = np.asarray(jax.random.randint(jax.random.key(5), (2, 9), 0, cfg.vocab_size))
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:], "weights": np.ones((2, 8), np.float32)}
    task = tasks.make_task("causal_lm")

    @functools.partial(jax.jit, static_argnums=1)
    def objective(p, weights):
        c = cfg.replace(aux_loss_weight=weights[0], router_z_loss_weight=weights[1])
        return step.summarize(task(p, batch, None, c, False))

    means = objective(lm.params, (0.5, 0.1))
    _, aux = FWD(lm.params, jnp.asarray(x[:, :-1]), cfg, return_aux=True)
    want = 0.5 * float(aux["moe"]["aux_loss"]) + 0.1 * float(aux["moe"]["z_loss"])
    np.testing.assert_allclose(float(means["loss"] - means["nll"]), want, rtol=1e-5)
    np.testing.assert_allclose(float(means["moe_aux_loss"]), float(aux["moe"]["aux_loss"]), rtol=1e-5)
    np.testing.assert_allclose(sum(float(means[f"moe_load_{e}"]) for e in range(8)), 2.0, atol=1e-5)
    assert float(means["moe_dropped"]) == 0.0
    # the router learns from the balancing loss: its gradient through the aux term alone is non-zero
    g = jax.jit(jax.grad(lambda p: objective(p, (0.5, 0.1))["loss"] - objective(p, (0.0, 0.0))["loss"]))(
        lm.params)
    assert float(jnp.abs(g["layers"]["mlp"]["router"]["w"]).max()) > 1e-6


@pytest.mark.parametrize("kw, match", [({"top_k": 9}, r"top_k=9 must be an integer in \[1, n_experts=8\]"),
                                       ({"capacity_factor": 0.0}, r"capacity_factor=0.0 must be a finite number > 0"),
                                       ({"dispatch": "greedy"}, r"dispatch='greedy' is not one of \['dropless', "
                                                                r"'capacity'\]")])
def test_bad_moe_settings_are_one_clear_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        mixtral.PRESETS["mixtral-tiny"].config.replace(**kw)


def test_capacity_dispatch_drops_when_full(lm: LM):
    cfg = lm.cfg.replace(dispatch="capacity", capacity_factor=0.25)
    _, aux = mixtral.apply(lm.params, lm.tokens, cfg, return_aux=True)
    assert int(aux["moe"]["dropped"]) > 0 and 0 < float(aux["moe"]["dropped_frac"]) < 1
    full = lm.cfg.replace(dispatch="capacity", capacity_factor=4.0)
    np.testing.assert_allclose(mixtral.apply(lm.params, lm.tokens, full), lm.logits, atol=1e-5)


def test_moe_ffn_is_a_block_argument():
    """A dense model's block takes the MoE layer by passing another ffn_fn with its own config."""
    from jaxlm.nn import blocks

    _, dense = models.get("llama-tiny")
    mcfg = moe.MoEConfig(d_model=dense.d_model, d_ff=32, n_experts=4, top_k=1)
    bcfg = blocks.BlockConfig(attn=dense.attn_cfg, ffn=mcfg, norm=dense.norm_cfg)
    p = P.init(jax.random.key(0), blocks.spec(bcfg))
    x = jax.random.normal(jax.random.key(1), (2, 5, dense.d_model))
    y, aux = jax.jit(lambda p, x: blocks.apply(p, x, bcfg))(p, x)
    y2, _ = jax.jit(lambda p, x: blocks.apply(p, x, bcfg, ffn_fn=moe.apply))(p, x)
    np.testing.assert_allclose(y, y2) and np.testing.assert_allclose(aux["moe"]["load"].sum(), 1.0, atol=1e-6)


@pytest.mark.slow
def test_cli_train_generate_convert(tmp_path, capsys):
    pytest.importorskip("transformers")

    from jaxlm import cli
    from tests.train.conftest import EXPERIMENT, write_corpus

    exp = tmp_path / "tiny.py"
    exp.write_text(EXPERIMENT.format(path=str(write_corpus(tmp_path / "corpus.txt", n_words=2000))))
    run = tmp_path / "run"
    assert cli.main(["train", str(exp), "model.preset=mixtral-tiny", "train.steps=3", "--run-dir", str(run),
                     "--quiet"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert train_rows and "moe_aux_loss" in train_rows[-1] and "moe_load_7" in train_rows[-1]
    capsys.readouterr()
    assert cli.main(["generate", str(run), "--prompt", "the", "--greedy", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("the")
    assert cli.main(["convert", "--to-hf", str(run), "--out", str(tmp_path / "hf")]) == 0
    hc = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hc["architectures"] == ["MixtralForCausalLM"] and hc["num_local_experts"] == 8
