"""LoRA through `jaxlm train` (finetune.lora.*): the run trains adapters over a frozen base taken from
train.init_from, its checkpoints hold only the adapters and their optimizer state, it resumes bit for bit,
and `jaxlm generate` / `jaxlm eval` / `jaxlm convert` read it (merged on the fly, or the adapters exported as
a PEFT directory)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import params as P
from jaxlm import pretrained
from jaxlm.config import ConfigError
from jaxlm.finetune import lora
from jaxlm.models import llama
from jaxlm.train import config as C
from jaxlm.train.checkpoint import CHECKPOINTS
from jaxlm.train.hooks import Hook
from jaxlm.train.loop import train
from jaxlm.train.setup import LORA_BASE_FILE
from tests.train.conftest import write_corpus, write_sentiment_tsv

MODEL = llama.Config(vocab_size=64, max_len=32, d_model=32, n_heads=2, n_kv_heads=1, n_layers=2, d_ff=64)
FAST = dict(batch_size=8, lr=3e-3, warmup_steps=0, log_every=1, eval_every=0, eval_batches=2, progress=False,
            tensorboard=False, plot=False, dropout=False, async_checkpoint=False)
LORA = ["finetune.lora.rank=4", "finetune.lora.alpha=8", "finetune.lora.targets=layers/attn/(q|v),layers/mlp/wi_0"]


def _bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def step_cache():
    """Compiled steps shared by this module's runs (a configuration trained again reuses them)."""
    from jaxlm.train.setup import StepCache

    return StepCache()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> tuple[C.RunConfig, Path, dict]:
    """A tiny llama trained for 20 steps: the base the LoRA runs adapt."""
    tmp = tmp_path_factory.mktemp("lora_base")
    corpus = write_corpus(tmp / "corpus.txt")
    run = C.RunConfig(model=MODEL, train=C.TrainConfig(steps=20, checkpoint_every=0, **FAST),
                      data=C.DataConfig(path=str(corpus), tokenizer="char", seq_len=32, eval_fraction=0.1))
    out = train(run, tmp / "base", quiet=True)
    return run, tmp / "base", out


class StopAt(Hook):
    """Ends the run after update ``step`` (as a kill after that step's checkpoint would)."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, loop) -> None:
        if loop.step == self.step:
            loop.stop = True


def _lora_run(base: C.RunConfig, base_dir: Path, *extra: str) -> C.RunConfig:
    return C.apply_overrides(base, [f"train.init_from={base_dir}", "train.steps=6", "train.checkpoint_every=3",
                                    "train.lr=1e-2", *LORA, *extra])


def test_lora_run_trains_only_adapters_saves_only_adapters_and_resumes_exactly(base_run, tmp_path, step_cache):
    base, base_dir, base_out = base_run
    run = _lora_run(base, base_dir)
    out = train(run, tmp_path / "lora", quiet=True, cache=step_cache)
    # B = 0 at the start: the adapted model is the base model (same eval batches, same numbers)
    assert out["first_eval"]["eval_loss"] == pytest.approx(base_out["last_eval"]["eval_loss"], abs=1e-6)
    assert out["last_eval"]["eval_loss"] < out["first_eval"]["eval_loss"]
    assert out["initialised_from"] == {"run": str(base_dir), "step": 20}
    assert json.loads((tmp_path / "lora" / LORA_BASE_FILE).read_text()) == {"run": str(base_dir), "step": 20}

    # the checkpoint holds the adapters (and their Adam moments) only: a fraction of the base's bytes
    loaded = pretrained.load(tmp_path / "lora")
    names = set(P.flatten(loaded.extra["adapters"]))
    expect = {f"{p}/{k}" for p in ("layers/attn/q", "layers/attn/v", "layers/mlp/wi_0") for k in lora.ADAPTER_KEYS}
    assert names == expect
    ck_lora = _bytes(tmp_path / "lora" / CHECKPOINTS / "6")
    ck_base = _bytes(base_dir / CHECKPOINTS / "20")
    assert ck_lora < 0.5 * ck_base, (ck_lora, ck_base)

    # the merged model = the base with W + (alpha/r) A B on the targets, every other weight bit for bit
    src = pretrained.load(base_dir)
    fm, fb = P.flatten(loaded.params), P.flatten(src.params)
    assert set(fm) == set(fb)
    changed = sorted(k for k in fb if not np.array_equal(np.asarray(fm[k]), np.asarray(fb[k])))
    assert changed == ["layers/attn/q/w", "layers/attn/v/w", "layers/mlp/wi_0/w"]
    x = jnp.asarray(np.random.default_rng(0).integers(0, 28, (2, 16)), jnp.int32)
    lc = loaded.extra["lora"]
    unmerged = llama.apply(lora.combine(src.params, loaded.extra["adapters"], lc), x, MODEL)
    merged = llama.apply(loaded.params, x, MODEL)
    assert float(jnp.abs(merged - unmerged).max()) <= 1e-5

    # stopped after step 3, resumed to 6: the same losses and adapters, bit for bit
    part = tmp_path / "lora_resumed"
    train(run, part, quiet=True, cache=step_cache, hooks=[StopAt(3)])
    resumed = train(run, part, quiet=True, cache=step_cache)
    assert resumed["resumed_from"] == 3
    a, b = _losses(tmp_path / "lora"), _losses(part)
    assert [a[s] for s in (4, 5, 6)] == [b[s] for s in (4, 5, 6)]
    again = pretrained.load(part)
    for k, v in P.flatten(loaded.extra["adapters"]).items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(P.flatten(again.extra["adapters"])[k]))

    # other LoRA settings on the same directory: refused before anything is written
    with pytest.raises(ConfigError, match=r"different finetune config \(differs in \['lora'\]\)"):
        train(C.apply_overrides(run, ["finetune.lora.rank=2"]), tmp_path / "lora", quiet=True)


def test_generate_eval_and_convert_read_a_lora_run(base_run, tmp_path, step_cache, capsys):
    from jaxlm.commands import convert, generate
    from jaxlm.commands import eval as eval_cmd

    base, base_dir, _ = base_run
    run = _lora_run(base, base_dir)
    train(run, tmp_path / "lora", quiet=True, cache=step_cache)
    assert generate.main([str(tmp_path / "lora"), "--prompt", "the cat", "--max-new-tokens", "8", "--greedy"]) == 0
    assert "the cat" in capsys.readouterr().out
    assert eval_cmd.main([str(tmp_path / "lora")]) == 0
    assert "loss" in capsys.readouterr().out

    # merged Hugging Face export: the same logits as the run's merged params
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    assert convert.main(["--to-hf", str(tmp_path / "lora"), "--out", str(tmp_path / "hf")]) == 0
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = np.random.default_rng(1).integers(0, 28, (2, 12))
    loaded = pretrained.load(tmp_path / "lora")
    ours = np.asarray(llama.apply(loaded.params, jnp.asarray(x, jnp.int32), MODEL))
    with torch.no_grad():
        theirs = hf_model(torch.tensor(x)).logits.numpy()
    assert np.abs(ours - theirs).max() <= 1e-4

    # the adapters alone as a PEFT directory, loaded by peft onto the base's export: the same logits again
    peft = pytest.importorskip("peft")
    assert convert.main(["--to-hf", str(tmp_path / "lora"), "--out", str(tmp_path / "adapter"), "--adapters"]) == 0
    assert convert.main(["--to-hf", str(base_dir), "--out", str(tmp_path / "hf_base")]) == 0
    m = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf_base").eval()
    pm = peft.PeftModel.from_pretrained(m, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        theirs = pm(torch.tensor(x)).logits.numpy()
    assert np.abs(ours - theirs).max() <= 1e-4
    # a run without adapters has nothing to export as PEFT
    assert convert.main(["--to-hf", str(base_dir), "--out", str(tmp_path / "none"), "--adapters"]) == 1
    assert "holds no LoRA adapters" in capsys.readouterr().err


def test_lora_dpo_run_starts_at_ln2_and_learns_the_preference(tmp_path, step_cache):
    """DPO with LoRA: the reference is the frozen base (the adapters start at zero)."""
    rows = [{"prompt": f"movie {i} was", "chosen": "great fun", "rejected": "a bore"} for i in range(20)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = C.RunConfig(model=MODEL, train=C.TrainConfig(task="dpo", steps=6, dpo_beta=0.5, checkpoint_every=0,
                                                         **(FAST | {"lr": 3e-2})),
                      data=C.DataConfig(path=str(data), tokenizer="char", seq_len=24, eval_fraction=0.2))
    run = C.apply_overrides(run, LORA)
    out = train(run, tmp_path / "dpo", quiet=True, cache=step_cache)
    assert abs(out["first_eval"]["eval_loss"] - math.log(2)) <= 1e-6
    assert out["last_eval"]["eval_loss"] < math.log(2)
    assert json.loads((tmp_path / "dpo" / LORA_BASE_FILE).read_text()) == {"seed": 0}


def test_lora_target_that_matches_nothing_lists_the_paths(base_run, tmp_path):
    base, base_dir, _ = base_run
    run = _lora_run(base, base_dir, "finetune.lora.targets=layers/ffn/up")
    with pytest.raises(ConfigError, match=r"'layers/ffn/up' matches no projection; the adaptable paths are "
                                          r"\['layers/attn/k', .*'layers/mlp/wo'\]"):
        train(run, tmp_path / "bad", quiet=True)
    with pytest.raises(ConfigError, match="finetune.lora.rank=64 exceeds the smaller dimension"):
        train(_lora_run(base, base_dir, "finetune.lora.rank=64"), tmp_path / "bad2", quiet=True)


class FrozenBytes(Hook):
    """Records the frozen base's quantized leaves and bytes at the start."""

    def on_start(self, loop) -> None:
        from jaxlm.nn import quant

        self.quantized = quant.describe(loop.state.frozen)
        self.bytes = quant.weight_bytes(loop.state.frozen)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_qlora_run_trains_adapters_over_a_quantized_frozen_base(base_run, tmp_path, step_cache, mode):
    base, base_dir, base_out = base_run
    run = _lora_run(base, base_dir, f"finetune.lora.quantize={mode}", "finetune.lora.quant_group=16")
    hook = FrozenBytes()
    out = train(run, tmp_path / mode, quiet=True, cache=step_cache, hooks=[hook])
    # every matmul weight of the base is held quantized (the token table and norms stay float)
    assert set(hook.quantized) == {f"layers/{p}/w" for p in ("attn/q", "attn/k", "attn/v", "attn/o",
                                                             "mlp/wi_0", "mlp/wi_1", "mlp/wo")}
    assert {d["bits"] for d in hook.quantized.values()} == {8 if mode == "int8" else 4}
    float_bytes = 4 * P.count(pretrained.load(base_dir).params)
    assert hook.bytes < (0.6 if mode == "int8" else 0.5) * float_bytes, (hook.bytes, float_bytes)
    # the quantized base starts near the float base (its quantization error) and the adapters train
    first, last = out["first_eval"]["eval_loss"], out["last_eval"]["eval_loss"]
    assert abs(first - base_out["last_eval"]["eval_loss"]) < (0.02 if mode == "int8" else 0.2)
    assert last < first
    assert math.isfinite(pretrained.load(tmp_path / mode).params["layers"]["attn"]["q"]["w"].sum())


def test_lora_classification_trains_the_new_head_in_full(tmp_path, step_cache):
    """BERT sentence classification as a LoRA run over an MLM base: the classifier head the base lacks is
    trained in full next to the adapters and saved with them; the frozen encoder weights are the base's."""
    corpus = write_sentiment_tsv(tmp_path / "sst.tsv")
    common = ["model.preset=bert-tiny", f"data.path={corpus}", "data.seq_len=32", "train.batch_size=16",
              "train.log_every=5", "train.eval_batches=2", "train.progress=false", "train.tensorboard=false",
              "train.plot=false", "train.checkpoint_every=0"]
    exp = "experiments/bert_sentiment.py"
    train(C.apply_overrides(C.load_experiment(exp), [*common, "train.steps=5"]), tmp_path / "mlm", quiet=True,
          cache=step_cache)
    ft = C.apply_overrides(C.load_experiment(exp + ":finetune"),
                           [*common, "train.steps=30", "data.eval_path=", "data.eval_fraction=0.2",
                            f"train.init_from={tmp_path / 'mlm'}", "train.lr=5e-3", "train.warmup_steps=3",
                            "model.dropout=0.0", "finetune.lora.rank=4"])
    out = train(ft, tmp_path / "ft", quiet=True, cache=step_cache)
    # the words give the label away: from chance (0.47 here) to above it (0.75 of 32 held-out sentences) in 30
    # steps over a 5-step MLM base (full fine-tuning of the same base reaches > 0.8, tests/train/test_train.py)
    assert out["first_eval"]["eval_accuracy"] < 0.65 and out["last_eval"]["eval_accuracy"] > 0.7
    assert out["last_eval"]["eval_loss"] < out["first_eval"]["eval_loss"]
    loaded = pretrained.load(tmp_path / "ft")
    trained = set(P.flatten(loaded.extra["adapters"]))
    assert {k for k in trained if not lora.is_adapter(k)} == {"classifier/w", "classifier/b"}
    src = P.flatten(pretrained.load(tmp_path / "mlm").params)
    merged = P.flatten(loaded.params)
    np.testing.assert_array_equal(np.asarray(merged["layers/attn/k/w"]), np.asarray(src["layers/attn/k/w"]))
    assert not np.array_equal(np.asarray(merged["layers/attn/q/w"]), np.asarray(src["layers/attn/q/w"]))
