"""lm-evaluation-harness with jaxlm as the backend: a local YAML task over a jsonl the test writes, scored by
jaxlm and by lm-eval's own ``hf`` backend on the same random-init tiny GPT-2 directory -> the same
per-request log-likelihoods (<= 1e-4) and the same accuracy. Offline: everything is built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.hf

TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{text}}}}"
doc_to_choice: ["bad", "good"]
doc_to_target: label
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    from jaxlm.data import text

    d = tmp_path_factory.mktemp("tiny_gpt2")
    words = "the film was good bad great awful plot acting fine dull and it is".split()
    rng = np.random.default_rng(0)
    tok = text.bpe_tokenizer([" ".join(rng.choice(words, 12)) for _ in range(300)], vocab_size=320)
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                                  pad_token="<pad>", unk_token="<unk>")
    hf_tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                  bos_token_id=1, eos_token_id=2)
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # random init is near-uniform: widen it so the two choices differ clearly
        for p in model.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    model.save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tasks")
    rng = np.random.default_rng(1)
    rows = [{"text": f"it was {'good' if i % 2 else 'bad'} and the plot is {rng.choice(['fine', 'dull'])} . it is",
             "label": int(rng.integers(0, 2))} for i in range(12)]
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "tiny_choice.yaml").write_text(TASK.format(data=str(d / "data.jsonl")))
    return d


def _lls(res) -> list[float]:
    samples = res["samples"]["tiny_choice"]
    return [float(r[0]) for s in sorted(samples, key=lambda s: s["doc_id"]) for r in s["filtered_resps"]]


def test_jaxlm_backend_matches_lm_evals_hf_backend(tiny_gpt2, task_dir):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from jaxlm.interop import lm_eval as backend

    ours = backend.evaluate(str(tiny_gpt2), ["tiny_choice"], include_path=str(task_dir), batch_size=4,
                            log_samples=True)
    theirs = simple_evaluate(model="hf", model_args=f"pretrained={tiny_gpt2},dtype=float32",
                             tasks=["tiny_choice"], task_manager=TaskManager(include_path=str(task_dir)),
                             log_samples=True, batch_size=4, device="cpu")
    a, b = _lls(ours), _lls(theirs)
    assert len(a) == len(b) == 24
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert len(set(np.round(a, 3))) > 4  # the requests score differently: the comparison can fail
    assert ours["results"]["tiny_choice"]["acc,none"] == theirs["results"]["tiny_choice"]["acc,none"]


def test_rolling_and_generate_run_batched_with_padding(tiny_gpt2):
    from lm_eval.api.instance import Instance

    from jaxlm.interop.lm_eval import JaxLM

    lm = JaxLM(str(tiny_gpt2), batch_size=2, max_length=16)
    docs = ["the film was good and the plot is fine " * 3, "bad", "it is dull"]
    reqs = [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)]
    rolled = lm.loglikelihood_rolling(reqs)
    # the same as the sum of per-token log-likelihoods from the prefix token, one request at a time
    for d, r in zip(docs, rolled):
        ids = lm.tok_encode(d)
        total = sum(lm._score([([lm.prefix_token_id] + ids[max(0, i - 15):i], [ids[i]])])[0][0]
                    for i in range(len(ids))) if len(ids) <= 16 else None
        assert np.isfinite(r) and r < 0
        if total is not None:
            assert abs(total - r) < 1e-3
    gen = lm.generate_until([Instance("generate_until", {}, ("the film", {"until": ["."], "max_gen_toks": 5}), 0),
                             Instance("generate_until", {}, ("it was", {"until": ["."], "max_gen_toks": 5}), 1)])
    assert len(gen) == 2 and all(isinstance(g, str) and "." not in g for g in gen)


def test_unknown_task_says_how_to_list_tasks(tiny_gpt2, task_dir):
    from jaxlm.commands import harness
    from jaxlm.interop import lm_eval as backend

    with pytest.raises(ValueError, match="lm-eval ls tasks"):
        backend.evaluate(str(tiny_gpt2), ["tiny_choise"], include_path=str(task_dir))
    assert harness.main([str(tiny_gpt2), "--tasks", "no_such_task_xyz", "--include-path", str(task_dir)]) == 2

