"""Optimizers, the pure step, the loop's outputs and errors, fine-tuning from another run, `jaxlm eval`."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import ConfigError
from jaxlm.data.text import DataError
from jaxlm.models import get
from jaxlm.train import config as C
from jaxlm.train import optim, state, step, tasks
from jaxlm.train.loop import TrainingError, train
from tests.train.conftest import write_sentiment_tsv


def test_decay_mask_excludes_biases_and_norms():
    from jaxlm.params import abstract, flatten

    mod, cfg = get("bert-tiny")
    flat = flatten(optim.decay_mask(abstract(mod.spec(cfg.replace(heads=("mlm",))))))
    assert flat["layers/attn/q/w"] and flat["embed/tokens"] and flat["mlm/transform/w"]
    for k in ("layers/attn/q/b", "layers/norm1/scale", "layers/norm1/bias", "embed_norm/scale", "mlm/bias",
              "mlm/norm/scale", "pooler/b"):
        assert not flat[k], k


def test_noam_and_cosine_schedules():
    f = optim.noam(512, 4000)
    for s in (1, 100, 4000, 10000):  # optax counts from 0; the paper's step_num from 1
        np.testing.assert_allclose(float(f(s - 1)), 512**-0.5 * min(s**-0.5, s * 4000**-1.5), rtol=1e-6)
    assert float(f(3999)) > float(f(3998)) and float(f(4000)) < float(f(3999))  # peak at the warm-up end
    t = C.TrainConfig(lr=1e-3, steps=100, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    sch = optim.schedule(t)
    np.testing.assert_allclose([float(sch(0)), float(sch(10)), float(sch(100))], [0.0, 1e-3, 1e-4], rtol=1e-5)


def _lm_batch(B=4, T=16, V=512, seed=0):
    x = np.random.default_rng(seed).integers(5, V, (B, T + 1)).astype(np.int32)
    return {"inputs": x[:, :-1], "targets": x[:, 1:], "weights": np.ones((B, T), np.float32)}


def _toy(task, params, batch, key, cfg, train):
    """Squared error of a linear map, as loss sums (the contract of a task)."""
    err = jnp.sum((batch["x"] @ params["w"] - batch["y"]) ** 2, axis=-1)
    return {"loss": jnp.sum(err), "nll": jnp.sum(err), "correct": jnp.zeros(()), "weight": jnp.float32(len(err))}


def test_gradient_accumulation_equals_the_full_batch():
    task = tasks.Task("toy", _toy)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 4)).astype(np.float32), "y": rng.normal(size=(8, 3)).astype(np.float32)}
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    results = []
    for k in (1, 2, 4):
        opt = optim.make_optimizer(C.TrainConfig(warmup_steps=0, batch_size=8, grad_accum=k, lr=0.1), None)
        st = state.create_state(0, None, opt, params=params)
        f = jax.jit(step.make_train_step(task, None, opt))
        for _ in range(3):  # three updates, each from k micro-batches
            for j in range(k):
                st, m = f(st, {n: v[j * 8 // k:(j + 1) * 8 // k] for n, v in batch.items()})
        results.append(np.asarray(st.params["w"]))
        assert int(st.step) == 3 * k
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[2], results[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(results[0], np.asarray(params["w"]))


def test_train_step_lowers_loss_and_eval_step_is_deterministic():
    _, cfg = get("llama-tiny")
    opt = optim.make_optimizer(C.TrainConfig(lr=3e-3, warmup_steps=0), cfg)
    task = tasks.make_task("causal_lm")
    st = state.create_state(jax.random.key(1), cfg, opt)
    f = jax.jit(step.make_train_step(task, cfg, opt), donate_argnums=0)
    batch = _lm_batch()
    losses = []
    for _ in range(8):
        st, m = f(st, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 0.5 and int(st.step) == 8
    ev = jax.jit(step.make_eval_step(task, cfg))
    a, b = ev(st.params, batch), ev(st.params, batch)
    assert float(a["loss"]) == float(b["loss"]) and float(a["weight_sum"]) == 64


def test_overrides_are_typed_and_unknown_keys_suggest():
    run = C.RunConfig(model="gpt2-tiny")
    r = C.apply_overrides(run, ["train.steps=7", "train.lr=1e-3", "model.n_layers=3", "model.preset=llama-tiny",
                                "train.clip_norm=none", "data.path=x.txt"])
    assert (r.train.steps, r.train.lr, r.model.n_layers, type(r.model).family, r.train.clip_norm) == \
        (7, 1e-3, 3, "llama", None)
    with pytest.raises(ConfigError, match="'train.stpes' \\(did you mean 'steps'\\?\\)"):
        C.apply_overrides(run, ["train.stpes=3"])
    with pytest.raises(ConfigError, match="did you mean 'preset'"):
        C.apply_overrides(run, ["model.prest=gpt2-tiny"])
    with pytest.raises(ConfigError, match="expected an integer"):
        C.apply_overrides(run, ["train.steps=ten"])
    with pytest.raises(ConfigError, match="not divisible by train.grad_accum"):
        C.apply_overrides(run, ["train.grad_accum=3"])
    with pytest.raises(ConfigError, match="needs a bert model"):
        C.resolve(C.apply_overrides(run, ["train.task=mlm"]))


@pytest.fixture
def tiny_run(tiny_experiment: Path) -> C.RunConfig:
    return C.apply_overrides(C.load_experiment(tiny_experiment),
                             ["train.steps=20", "train.tensorboard=true", "train.plot=true", "train.eval_every=10"])


def test_step_cache_is_shared_by_runs_differing_only_in_loop_settings(tiny_run):
    from jaxlm.train.setup import StepCache

    cache, task, run = StepCache(max_entries=2), tasks.make_task("causal_lm"), C.resolve(tiny_run)
    a = cache.get(task, run)
    assert cache.get(task, C.apply_overrides(run, ["train.eval_every=3", "train.log_every=7",
                                                   "train.checkpoint_every=2", "train.init_from=x"])) is a
    assert cache.get(task, C.apply_overrides(run, ["train.lr=1e-2"])) is not a  # another optimizer
    assert cache.get(task, run) is a
    cache.get(task, C.apply_overrides(run, ["train.batch_size=4"]))  # a third: the oldest is dropped
    assert cache.get(task, run) is not a


def test_run_directory_outputs_and_eval_command(tiny_run, tmp_path: Path, capsys, step_cache):
    run_dir = tmp_path / "run"
    out = train(tiny_run, run_dir, quiet=True, cache=step_cache)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 21))
    assert {"loss", "nll", "ppl", "accuracy", "grad_norm", "lr", "tokens_per_s", "mfu"} <= set(rows[-2])
    ev = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in ev] == [10, 20]
    assert out["last_eval"]["eval_loss"] < out["first_eval"]["eval_loss"]
    assert (run_dir / "loss.png").stat().st_size > 1000
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    cfg = json.loads((run_dir / "config.json").read_text())
    assert {"model", "train", "data", "mesh"} <= set(cfg) and cfg["train"]["steps"] == 20
    assert (run_dir / "tokenizer.json").exists()

    from jaxlm import pretrained
    from jaxlm.commands import eval as eval_cmd

    loaded = pretrained.load(run_dir)
    assert loaded.extra["step"] == 20 and loaded.tokenizer is not None
    assert eval_cmd.main([str(run_dir), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["step"] == 20
    np.testing.assert_allclose(got["eval_loss"], out["last_eval"]["eval_loss"], rtol=1e-5)

    # --step picks a checkpoint: a number, or 'best' by train.best_metric (eval_loss, lowest)
    best = min(ev, key=lambda r: r["eval_loss"])
    for which, want in (("10", ev[0]), ("best", best)):
        assert eval_cmd.main([str(run_dir), "--json", "--step", which]) == 0
        got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert got["step"] == want["step"]
        np.testing.assert_allclose(got["eval_loss"], want["eval_loss"], rtol=1e-5)
    assert eval_cmd.main([str(run_dir), "--step", "7"]) == 2
    assert "no checkpoint at step 7; it has steps [10, 20]" in capsys.readouterr().err
    from jaxlm.commands import generate as gen_cmd

    assert gen_cmd.main([str(run_dir), "--prompt", "the cat", "--greedy", "--max-new-tokens", "4",
                         "--step", "10"]) == 0
    assert capsys.readouterr().out.startswith("the cat")
    assert gen_cmd.main([str(run_dir), "--prompt", "the", "--step", "7"]) == 2
    assert "no checkpoint at step 7" in capsys.readouterr().err

    # fine-tuning starts from a chosen checkpoint of another run
    ft = train(C.apply_overrides(tiny_run, [f"train.init_from={run_dir}", "train.init_step=10", "train.steps=1",
                                            "train.eval_every=0"]), tmp_path / "ft", quiet=True,
               cache=step_cache)
    assert ft["initialised_from"] == {"run": str(run_dir), "step": 10} and ft["resumed_from"] is None
    with pytest.raises(ConfigError, match="train.init_step='bset' must be a step number, 'best' or 'latest'"):
        C.apply_overrides(tiny_run, ["train.init_step=bset"])

    # rerunning a finished run resumes at its end and trains nothing more
    again = train(tiny_run, run_dir, quiet=True, cache=step_cache)
    assert again["resumed_from"] == 20 and again["step"] == 20


def test_a_caller_hook_sees_steps_and_rows_and_can_stop_the_run(tiny_run, tmp_path: Path, step_cache):
    from jaxlm.train.hooks import Hook

    class StopAt4(Hook):
        def __init__(self):
            self.steps, self.rows, self.finished = [], [], None

        def on_step(self, loop):
            self.steps.append(loop.step)
            loop.stop = loop.step == 4

        def on_log(self, loop, row):
            self.rows.append(row["step"])

        def on_end(self, loop):
            self.finished = loop.finished

    hook = StopAt4()
    out = train(tiny_run, tmp_path / "run", quiet=True, hooks=[hook], cache=step_cache)
    assert hook.steps == [1, 2, 3, 4] and hook.rows == [1, 2, 3, 4] and hook.finished
    assert out["step"] == 4 and out["last_checkpoint"] == 4 and out["interrupted"] is None


def test_bad_input_errors(tiny_run, tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=f"{blocker} is a file, not a directory, so the run directory cannot be "
                                          f"created"):
        train(tiny_run, blocker / "run", quiet=True)
    with pytest.raises(DataError, match="does not exist"):
        train(C.apply_overrides(tiny_run, ["data.path=" + str(tmp_path / "nope.txt")]), tmp_path / "r1", quiet=True)
    (tmp_path / "rows.jsonl").write_text('{"sentence": "hello there"}\n' * 50)
    with pytest.raises(DataError, match="did you mean 'sentence'"):
        train(C.apply_overrides(tiny_run, [f"data.path={tmp_path / 'rows.jsonl'}", "data.text_column=sentense"]),
              tmp_path / "r2", quiet=True)
    with pytest.raises(DataError, match="model.vocab_size=8"):
        train(C.apply_overrides(tiny_run, ["model.vocab_size=8"]), tmp_path / "r3", quiet=True)
    # a run that saved a checkpoint (a directory with none takes new settings: tests/faults)
    (tmp_path / "r4" / "checkpoints" / "5").mkdir(parents=True)
    C.save(C.resolve(tiny_run), tmp_path / "r4" / "config.json")
    with pytest.raises(ConfigError, match="different model config"):
        train(C.apply_overrides(tiny_run, ["model.d_ff=32"]), tmp_path / "r4", quiet=True)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_run, tmp_path: Path,
                                                                          step_cache):
    run = C.apply_overrides(tiny_run, ["train.lr=1e30", "train.clip_norm=none", "train.warmup_steps=0",
                                       "train.checkpoint_every=1", "train.optimizer=adam"])
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"at step 2: training stopped. The last good checkpoint is step 1"):
        train(run, run_dir, quiet=True, cache=step_cache)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["1"]
    from jaxlm.pretrained import load_run

    params = load_run(run_dir).params
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_bert_mlm_then_finetune_from_its_params(tmp_path: Path, step_cache):
    corpus = write_sentiment_tsv(tmp_path / "sst.tsv")
    common = ["model.preset=bert-tiny", f"data.path={corpus}", "data.seq_len=32", "train.batch_size=16",
              "train.log_every=5", "train.eval_batches=2", "train.progress=false", "train.tensorboard=false",
              "train.plot=false"]
    exp = "experiments/bert_sentiment.py"
    mlm = C.apply_overrides(C.load_experiment(exp), [*common, "train.steps=5"])
    out = train(mlm, tmp_path / "mlm", quiet=True, cache=step_cache)
    assert out["step"] == 5
    ft = C.apply_overrides(C.load_experiment(exp + ":finetune"),
                           [*common, "train.steps=30", "data.eval_path=", "data.eval_fraction=0.2",
                            f"train.init_from={tmp_path / 'mlm'}", "train.lr=2e-3", "train.warmup_steps=3",
                            "model.dropout=0.0"])
    out = train(ft, tmp_path / "ft", quiet=True, cache=step_cache)
    from jaxlm.pretrained import load_run

    src = load_run(tmp_path / "mlm").params
    assert (tmp_path / "ft" / "tokenizer.json").read_text() == (tmp_path / "mlm" / "tokenizer.json").read_text()
    first = json.loads((tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 5
    assert out["last_eval"]["eval_accuracy"] > 0.8  # the words give the label away
    assert "classifier" in load_run(tmp_path / "ft").params and "mlm" in src


@pytest.mark.parametrize("name,preset", [("gpt2_shakespeare", "gpt2-tiny"), ("transformer_translation", "transformer-tiny"),
                                         ("bert_sentiment", "bert-tiny"), ("bert_sentiment:finetune", "bert-tiny"),
                                         ("llama_tiny", "llama-tiny"), ("demo", "gpt2-tiny")])
def test_experiments_resolve_with_their_tiny_preset(name, preset):
    file, _, fn = name.partition(":")
    path = f"experiments/{file}.py" + (f":{fn}" if fn else "")
    run = C.resolve(C.apply_overrides(C.load_experiment(path), [f"model.preset={preset}", "data.seq_len=64"]))
    assert run.model.n_layers == get(preset)[1].n_layers
    full = C.resolve(C.load_experiment(path))
    assert full.data.path and full.train.steps > 0
