"""`jaxlm train` with train.task=sft (chat jsonl, the checkpoint's chat template, assistant-only loss) and
train.task=dpo (prompt/chosen/rejected jsonl, reference log-probs from the starting model), end to end on a
tiny llama, plus the configuration errors."""

from __future__ import annotations

import json
import math

import pytest

from jaxlm.config import ConfigError, override
from jaxlm.data.chat import ChatDataError
from jaxlm.data.text import DataError, char_tokenizer
from jaxlm.models import llama
from jaxlm.train import config as C
from jaxlm.train.loop import train

# a compact chat template (character tokens): "<u>5+1?|<a>6|"
TEMPLATE = ("{% for m in messages %}{{'<' + m['role'][0] + '>' + m['content'] + '|'}}{% endfor %}"
            "{% if add_generation_prompt %}{{'<a>'}}{% endif %}")
MODEL = llama.Config(vocab_size=64, max_len=64, d_model=32, n_heads=2, n_layers=1, d_ff=64)
FAST = dict(batch_size=4, lr=3e-3, warmup_steps=0, log_every=1, eval_every=0, eval_batches=1, checkpoint_every=0,
            progress=False, tensorboard=False, plot=False, dropout=False)


def _checkpoint_dir(tmp_path, texts):
    d = tmp_path / "chat_model"
    d.mkdir()
    char_tokenizer(texts).save(str(d / "tokenizer.json"))
    (d / "chat_template.jinja").write_text(TEMPLATE)
    return d


def _chat_rows(n=24):
    return [{"messages": [{"role": "user", "content": f"{i}+1?"},
                          {"role": "assistant", "content": str(i + 1)}]} for i in range(n)]


def test_sft_run_trains_on_assistant_tokens(tmp_path):
    rows = _chat_rows()
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok_dir = _checkpoint_dir(tmp_path, ["<u>|<a>?+0123456789"])
    run = C.RunConfig(model=MODEL, train=C.TrainConfig(task="sft", steps=6, **FAST),
                      data=C.DataConfig(path=str(data), tokenizer=str(tok_dir), seq_len=48, eval_fraction=0.2))
    out = train(run, tmp_path / "run", quiet=True)
    n = out["info"]["conversations"]
    assert 18 <= n <= 20 and out["info"]["truncated"] == 0, out["info"]
    # each reply is 1-2 digits + the template's "|": the trained targets are the replies only
    assert n * 2 <= out["info"]["train_tokens"] <= n * 3, out["info"]
    assert math.isfinite(out["loss"]) and out["last_eval"]["eval_loss"] < out["first_eval"]["eval_loss"]

    # a chat dataset without a messages field, a tokenizer without a template, a trained-from-scratch tokenizer
    with pytest.raises(DataError, match="no column 'messages'.*set data.messages_column"):
        (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "hi"}) + "\n")
        train(run.replace(data=override(run.data, {"path": str(tmp_path / "bad.jsonl")})), tmp_path / "r2", quiet=True)
    (tok_dir / "chat_template.jinja").unlink()
    with pytest.raises(ChatDataError, match="no chat template at"):
        train(run, tmp_path / "r3", quiet=True)
    with pytest.raises(DataError, match="train.task=sft fine-tunes a pretrained chat model"):
        train(run.replace(data=override(run.data, {"tokenizer": "char"})), tmp_path / "r4", quiet=True)


def test_dpo_run_logs_rewards_and_starts_at_ln2(tmp_path):
    rows = [{"prompt": f"movie {i} was", "chosen": "great fun", "rejected": "a bore"} for i in range(20)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = C.RunConfig(model=MODEL, train=C.TrainConfig(task="dpo", steps=5, dpo_beta=0.5, **FAST),
                      data=C.DataConfig(path=str(data), tokenizer="char", seq_len=24, eval_fraction=0.2))
    out = train(run, tmp_path / "run", quiet=True)
    assert abs(out["first_eval"]["eval_loss"] - math.log(2)) <= 1e-6  # the policy starts as the reference
    assert out["last_eval"]["eval_loss"] < math.log(2) and out["last_eval"]["eval_accuracy"] == 1.0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in logged if "reward_margin" in r]
    assert train_rows and train_rows[-1]["reward_margin"] > 0, logged[-1]
    assert {"chosen_reward", "rejected_reward"} <= set(train_rows[-1])

    (tmp_path / "same.jsonl").write_text(json.dumps({"prompt": "a", "chosen": "b c", "rejected": "b c"}) + "\n")
    with pytest.raises(DataError, match="pair 0: chosen and rejected are identical"):
        train(run.replace(data=override(run.data, {"path": str(tmp_path / "same.jsonl"), "eval_fraction": "0"})),
              tmp_path / "r2", quiet=True)


def test_finetune_tasks_need_a_causal_lm():
    with pytest.raises(ConfigError, match="train.task='dpo' trains a causal_lm model"):
        C.resolve(C.RunConfig(model="bert-tiny", train=C.TrainConfig(task="dpo")))
    with pytest.raises(ConfigError, match="train.dpo_beta=0 must be a finite number > 0"):
        C.TrainConfig(dpo_beta=0)
