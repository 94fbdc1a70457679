"""Bad settings and bad token ids: every numeric setting outside its domain is one ConfigError naming the key,
the value and the fix; token ids outside the vocabulary are caught on every path, including inside jit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm.config import ConfigError
from jaxlm.models import FAMILIES, gpt2
from jaxlm.nn import embed
from jaxlm.train import config as C
from jaxlm.train import tasks
from jaxlm.train.hooks import Hook, Loop, TrainingError
from jaxlm.train.loop import train
from jaxlm.train.state import create_state
from jaxlm.train.step import make_train_step
from tests.train.conftest import EXPERIMENT, write_corpus

BASE = C.RunConfig(model="llama-tiny", data=C.DataConfig(path="x.txt"))

# (override, text the one-line error must contain: the key and value, and its fix)
BAD = [
    ("train.steps=0", "train.steps=0 must be a positive integer; e.g. train.steps="),
    ("train.batch_size=-4", "train.batch_size=-4 must be a positive integer"),
    ("train.grad_accum=0", "train.grad_accum=0 must be a positive integer"),
    ("train.grad_accum=3", "train.batch_size=16 is not divisible by train.grad_accum=3"),
    ("train.seed=-1", "train.seed=-1 must be an integer >= 0; pick any non-negative seed"),
    ("train.lr=0", "train.lr=0.0 must be a finite number > 0; e.g. train.lr=3e-4"),
    ("train.lr=-3e-4", "train.lr=-0.0003 must be a finite number > 0"),
    ("train.lr=nan", "train.lr=nan must be a finite number > 0"),
    ("train.lr=inf", "train.lr=inf must be a finite number > 0"),
    ("train.warmup_steps=-1", "train.warmup_steps=-1 must be an integer >= 0"),
    ("finetune.lora.rank=-2", "finetune.lora.rank=-2 must be a positive integer (e.g. 8; 0 = off)"),
    ("finetune.lora.alpha=0", "finetune.lora.alpha=0.0 must be a finite number > 0 (e.g. 16)"),
    ("finetune.lora.dropout=1", "finetune.lora.dropout=1.0 must be in [0, 1)"),
    ("finetune.lora.quant_group=-4", "finetune.lora.quant_group=-4 must be an even integer >= 2"),
    ("train.min_lr_ratio=1.5", "train.min_lr_ratio=1.5 must be in [0, 1]"),
    ("train.min_lr_ratio=-0.1", "train.min_lr_ratio=-0.1 must be in [0, 1]"),
    ("train.b1=1", "train.b1=1.0 must be in [0, 1); Adam's decay rates are e.g. b1=0.9"),
    ("train.b2=-0.5", "train.b2=-0.5 must be in [0, 1)"),
    ("train.b2=nan", "train.b2=nan must be in [0, 1)"),
    ("train.eps=0", "train.eps=0.0 must be a finite number > 0; e.g. train.eps=1e-8"),
    ("train.eps=inf", "train.eps=inf must be a finite number > 0"),
    ("train.weight_decay=-0.01", "train.weight_decay=-0.01 must be a finite number >= 0; 0 turns weight decay off"),
    ("train.clip_norm=-1", "train.clip_norm=-1.0 must be a finite number > 0, or none / 0 for no clipping"),
    ("train.clip_norm=nan", "train.clip_norm=nan must be a finite number > 0"),
    ("train.label_smoothing=1", "train.label_smoothing=1.0 must be in [0, 1)"),
    ("train.label_smoothing=-0.1", "train.label_smoothing=-0.1 must be in [0, 1)"),
    ("train.z_loss=-1e-4", "train.z_loss=-0.0001 must be a finite number >= 0; 0 turns the z-loss off"),
    ("train.z_loss=inf", "train.z_loss=inf must be a finite number >= 0"),
    ("train.mlm_prob=0", "train.mlm_prob=0.0 must be in (0, 1)"),
    ("train.mlm_prob=1", "train.mlm_prob=1.0 must be in (0, 1)"),
    ("train.log_every=0", "train.log_every=0 must be a positive integer"),
    ("train.eval_every=-1", "train.eval_every=-1 must be an integer >= 0; e.g. train.eval_every=200 (0 = only"),
    ("train.eval_batches=0", "train.eval_batches=0 must be a positive integer"),
    ("train.checkpoint_every=-5", "train.checkpoint_every=-5 must be an integer >= 0"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints=0 must be a positive integer"),
    ("train.peak_flops=0", "train.peak_flops=0.0 must be a finite number > 0 or none"),
    ("data.seq_len=0", "data.seq_len=0 must be a positive integer; e.g. data.seq_len=128"),
    ("data.target_len=-1", "data.target_len=-1 must be a positive integer or none"),
    ("data.vocab_size=0", "data.vocab_size=0 must be a positive integer or none"),
    ("data.max_examples=0", "data.max_examples=0 must be a positive integer or none"),
    ("data.max_eval_examples=-2", "data.max_eval_examples=-2 must be a positive integer or none"),
    ("data.eval_fraction=1", "data.eval_fraction=1.0 must be in [0, 1)"),
    ("data.eval_fraction=nan", "data.eval_fraction=nan must be in [0, 1)"),
    ("mesh.data=0", "mesh.data=0 must be an integer >= 1 (or -1: use the remaining devices)"),
    ("mesh.fsdp=-2", "mesh.fsdp=-2 must be an integer >= 1"),
    ("mesh.tensor=0", "mesh.tensor=0 must be an integer >= 1"),
    ("model.vocab_size=0", "llama.Config.vocab_size=0 must be a positive integer"),
    ("model.max_len=-1", "llama.Config.max_len=-1 must be a positive integer"),
    ("model.d_model=0", "llama.Config.d_model=0 must be a positive integer"),
    ("model.n_heads=0", "llama.Config.n_heads=0 must be a positive integer"),
    ("model.n_layers=0", "llama.Config.n_layers=0 must be a positive integer"),
    ("model.d_ff=0", "llama.Config.d_ff=0 must be a positive integer"),
    ("model.n_kv_heads=3", "n_kv_heads must divide n_heads"),
    ("model.d_head=0", "llama.Config.d_head=0 must be a positive integer (or None"),
    ("model.dropout=1", "llama.Config.dropout=1.0 must be in [0, 1)"),
    ("model.attn_dropout=-0.1", "llama.Config.attn_dropout=-0.1 must be in [0, 1)"),
    ("model.ffn_dropout=nan", "llama.Config.ffn_dropout=nan must be in [0, 1)"),
    ("model.norm_eps=0", "llama.Config.norm_eps=0.0 must be positive and finite (the default is"),
    ("model.rope_theta=inf", "llama.Config.rope_theta=inf must be positive and finite"),
    ("model.init_std=-0.02", "llama.Config.init_std=-0.02 must be positive and finite"),
    ("model.pad_id=-1", "llama.Config.pad_id=-1 must be in [0, vocab_size="),
]


# fields only some families have: (preset, override, message)
FAMILY_BAD = [
    ("bert-tiny", "model.classifier_dropout=1.5", "bert.Config.classifier_dropout=1.5 must be in [0, 1)"),
    ("bert-tiny", "model.type_vocab_size=0", "bert.Config.type_vocab_size=0 must be >= 1"),
    ("bert-tiny", "model.num_labels=0", "bert.Config.num_labels=0 must be >= 1"),
    ("transformer-tiny", "model.bos_id=-1", "transformer.Config.bos_id=-1 must be in [0, vocab_size=512): an integer"),
    ("transformer-tiny", "model.eos_id=512", "transformer.Config.eos_id=512 must be in [0, vocab_size="),
    ("transformer-tiny", "model.n_dec_layers=0", "transformer.Config.n_dec_layers=0 must be positive"),
    ("llama-tiny", "mesh.context=0", "mesh.context=0 must be an integer >= 1"),
    ("llama-tiny", "train.dpo_beta=0", "train.dpo_beta=0.0 must be a finite number > 0"),
    ("gemma-tiny", "model.attn_scale=0", "gemma.Config.attn_scale=0.0 must be positive and finite, or None"),
    ("gemma2-tiny", "model.attn_softcap=0", "gemma2.Config.attn_softcap=0.0 must be positive and finite"),
    ("gemma2-tiny", "model.final_logit_softcap=-1", "gemma2.Config.final_logit_softcap=-1.0 must be a positive"),
    ("mixtral-tiny", "model.aux_loss_weight=-1", "aux_loss_weight=-1.0 must be a finite number >= 0"),
    ("mixtral-tiny", "model.capacity_factor=0", "capacity_factor=0.0 must be a finite number > 0"),
    ("mixtral-tiny", "model.n_experts=0", "n_experts=0 must be a positive integer"),
    ("mixtral-tiny", "model.top_k=9", "top_k=9 must be an integer in [1, n_experts=8]"),
    ("mixtral-tiny", "model.router_z_loss_weight=-1", "router_z_loss_weight=-1.0 must be a finite number >= 0"),
    ("t5-tiny", "model.rel_buckets=0", "rel_buckets=0 must be a positive integer"),
    ("t5-tiny", "model.rel_max_distance=2", "rel_max_distance=2 must be an integer >= rel_buckets=8"),
    ("llama3.1-tiny", "model.rope_factor=0", "llama.Config.rope_factor=0.0 must be positive and finite"),
    ("llama3.1-tiny", "model.rope_high_freq_factor=0", "rope_high_freq_factor=0.0 must be positive and finite"),
    ("llama3.1-tiny", "model.rope_low_freq_factor=0", "rope_low_freq_factor=0.0 must be positive and finite"),
    ("llama3.1-tiny", "model.rope_original_max_len=0", "rope_original_max_len=0 must be positive"),
    ("mistral-tiny", "model.sliding_window=0", "mistral.Config.sliding_window=0 must be an integer in [1, max_len="),
]


@pytest.mark.parametrize("preset,override,message", [("llama-tiny", o, m) for o, m in BAD] + FAMILY_BAD,
                         ids=[o for o, _ in BAD] + [f"{p}:{o}" for p, o, _ in FAMILY_BAD])
def test_every_bad_value_is_one_config_error_naming_key_value_and_fix(preset: str, override: str, message: str):
    with pytest.raises(ConfigError) as e:
        C.apply_overrides(BASE, [f"model.preset={preset}", override])
    text = str(e.value)
    assert message in text and "\n" not in text


def _numeric_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)
            if any(t in str(f.type) for t in ("int", "float")) and "bool" not in str(f.type)]


def test_the_table_covers_every_numeric_field():
    """A numeric setting added later without a row here (and its validation) fails this test."""
    covered = {o.split("=")[0] for o, _ in BAD} | {o.split("=")[0] for _, o, _ in FAMILY_BAD}
    fields = {f"train.{f}" for f in _numeric_fields(C.TrainConfig)} | \
        {f"data.{f}" for f in _numeric_fields(C.DataConfig)} | \
        {f"mesh.{f}" for f in _numeric_fields(C.MeshConfig)} | \
        {f"finetune.lora.{f}" for f in _numeric_fields(C.LoRASettings)} | \
        {f"model.{f}" for fam in FAMILIES.values() for f in _numeric_fields(fam.Config) if f not in fam.Config.unused}
    assert fields - covered == set()


@pytest.mark.parametrize("override", ["train.clip_norm=0", "train.clip_norm=none", "train.warmup_steps=5000",
                                      "train.z_loss=0", "train.weight_decay=0", "train.seed=0",
                                      "train.eval_every=0", "mesh.data=-1", "model.dropout=0"])
def test_boundary_values_that_mean_off_are_accepted(override: str):
    """0 turns clipping, the z-loss and weight decay off (optim skips a falsy clip_norm); a warm-up longer
    than the run is allowed (short debug runs keep the preset's warm-up: the rate then never peaks)."""
    C.apply_overrides(BASE, [override])


# ------------------------------------------------------------------------------------------------------------
# token ids under jit
TINY = gpt2.Config(vocab_size=64, max_len=16, d_model=32, n_heads=2, n_layers=1, d_ff=64, dropout=0.0,
                   attn_dropout=0.0)


@pytest.fixture(scope="module")
def tiny_params():
    return gpt2.init(jax.random.key(0), TINY)


def test_eager_apply_raises_on_out_of_range_ids(tiny_params):
    with pytest.raises(ValueError, match=r"contain 64, outside \[0, 64\)"):
        gpt2.apply(tiny_params, jnp.array([[1, 64]]), TINY)
    with pytest.raises(ValueError, match=r"contain -1, outside \[0, 64\)"):
        gpt2.apply(tiny_params, jnp.array([[1, -1]]), TINY)


def test_jitted_apply_embeds_out_of_range_ids_as_zeros_never_nan_never_wrapping(tiny_params):
    """Under jit the ids cannot raise: they embed as zero vectors. Before, id 64 gave NaN logits and id -1
    silently behaved as id 63."""
    fn = jax.jit(lambda p, t: gpt2.apply(p, t, TINY))
    good = np.asarray(fn(tiny_params, jnp.array([[5, 63, 7]])))
    for bad in (-1, 64, 10_000, -65):
        out = np.asarray(fn(tiny_params, jnp.array([[5, bad, 7]])))
        assert np.isfinite(out).all(), bad
        assert np.allclose(out[0, 0], good[0, 0])  # causal: the position before is untouched
        assert not np.allclose(out[0, 1], good[0, 1])  # -1 is not id 63
    table = {"tokens": jnp.arange(12.0).reshape(4, 3) + 1}
    rows = np.asarray(jax.jit(embed.apply)(table, jnp.array([-1, 0, 3, 4])))
    np.testing.assert_array_equal(rows, [[0, 0, 0], [1, 2, 3], [10, 11, 12], [0, 0, 0]])


def _state_and_step(task_name: str = "causal_lm"):
    task = tasks.make_task(task_name)
    opt = optax.sgd(0.1)
    return create_state(0, TINY, opt), jax.jit(make_train_step(task, TINY, opt))


def test_the_jitted_train_step_counts_out_of_range_ids_in_inputs_and_targets():
    state, step = _state_and_step()
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 64, (2, 9)).astype(np.int32)
    batch = {"inputs": toks[:, :-1], "targets": toks[:, 1:], "weights": np.ones((2, 8), np.float32)}
    _, m = step(state, batch)
    assert int(m["bad_ids"]) == 0
    bad = {k: v.copy() for k, v in batch.items()}
    bad["inputs"][0, 3], bad["inputs"][1, 0], bad["targets"][1, 7] = 64, -1, -1
    _, m = step(state, bad)
    assert int(m["bad_ids"]) == 3
    # a -1 target used to select the last logit: a finite, wrong loss that no NaN check would catch
    assert np.isfinite(float(m["loss"]))


class CorruptIdsAfter(Hook):
    """Once step ``step`` is done, writes id -1 into the first input and id 64 (the vocab_size) into the last
    target of every training example: from the next batch on, ids outside the vocabulary reach the jitted
    step (a -1 target used to give a finite, wrong loss; a 64 input NaN logits)."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, loop: Loop) -> None:
        if loop.step == self.step:
            arrays = loop.setup.prep.train.arrays
            arrays["inputs"][:, 0] = -1
            arrays["targets"][:, -1] = 64


def test_training_stops_on_out_of_range_ids_naming_the_step_and_keeps_checkpoints(tmp_path: Path):
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=1500)
    exp = tmp_path / "tiny.py"
    exp.write_text(EXPERIMENT.format(path=str(corpus)))
    run = C.apply_overrides(C.load_experiment(exp), ["train.steps=4", "train.checkpoint_every=1",
                                                     "train.async_checkpoint=false", "data.eval_fraction=0"])
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError) as e:
        train(run, run_dir, quiet=True, hooks=[CorruptIdsAfter(2)])
    msg = str(e.value)
    assert msg.startswith("16 token ids outside [0, model.vocab_size=64) in the batch of step 3: training "
                          "stopped; the last good checkpoint is step 2, not replaced.")
    assert "re-tokenize it with the run's tokenizer or raise model.vocab_size" in msg
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [1, 2]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows if "loss" in r) == 2
