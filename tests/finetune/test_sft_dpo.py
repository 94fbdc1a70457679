"""SFT on conversations (assistant-only loss, packing without cross-talk) and the DPO loss (ln 2 at the
reference, trl's formula, logged reward margins), on llama-tiny."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm import models
from jaxlm.data.text import char_tokenizer
from jaxlm.finetune import dpo, sft
from jaxlm.train.state import create_state
from jaxlm.train.step import make_train_step
from jaxlm.train.tasks import make_task

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

MULTI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
         {"role": "assistant", "content": "6, of course"}]
# a compact template, so that (character-tokenized) conversations share a row of llama-tiny's 128 positions
SHORT = ("{% for m in messages %}{{'<' + m['role'][0] + '>' + m['content'] + '|'}}{% endfor %}"
         "{% if add_generation_prompt %}{{'<a>'}}{% endif %}")
CONVS = [[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
         [{"role": "user", "content": "France?"}, {"role": "assistant", "content": "Paris."}],
         [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi there"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
          {"role": "assistant", "content": "2"}]]


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer(["".join(p for p, _ in sft.render(c, CHATML)) for c in [MULTI, *CONVS]] +
                          ["".join(p for p, _ in sft.render(c, SHORT)) for c in CONVS])


@pytest.fixture(scope="module")
def llama():
    fam, cfg = models.get("llama-tiny")
    return fam, cfg, fam.init(jax.random.key(0), cfg)


def test_assistant_tokens_are_exactly_the_assistant_turns(tok):
    ids, mask = sft.encode(MULTI, tok, CHATML)
    assert tok.decode(ids.tolist()) == "".join(p for p, _ in sft.render(MULTI, CHATML))
    # the masked tokens, run by run, are each assistant reply plus the template's end-of-turn marker
    runs, cur = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            cur.append(int(i))
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    runs += [tok.decode(cur)] if cur else []
    assert runs == ["4<|im_end|>\n", "6, of course<|im_end|>\n"]


def test_prompt_tokens_get_exactly_zero_gradient(tok, llama):
    fam, cfg, params = llama
    arrays, info = sft.build(CONVS, tok, SHORT, seq_len=128)
    assert info["truncated"] == 0 and info["rows"] == 1 and info["assistant_tokens"] == int(arrays["weights"].sum())
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    task = make_task("sft")
    loss = jax.jit(jax.value_and_grad(lambda p, b: task(p, b, None, cfg, False)["loss"]))
    v0, g0 = loss(params, batch)
    # any target of a prompt (non-assistant) position may change: loss and gradients are bit-identical
    w = arrays["weights"] > 0
    scrambled = np.where(w, arrays["targets"], (arrays["targets"] + 7) % cfg.vocab_size)
    v1, g1 = loss(params, batch | {"targets": jnp.asarray(scrambled)})
    assert float(v0) == float(v1)
    jax.tree.map(np.testing.assert_array_equal, g0, g1)
    # and d loss / d logits is exactly zero at every prompt position
    from jaxlm import losses

    logits = fam.apply(params, batch["inputs"], cfg, positions=batch["positions"], segment_ids=batch["segment_ids"])
    gl = jax.grad(lambda lg: losses.cross_entropy(lg, batch["targets"], batch["weights"])["loss"])(logits)
    assert np.all(np.asarray(gl)[~w] == 0) and np.abs(np.asarray(gl)[w]).max() > 0


def test_packing_never_lets_a_conversation_attend_to_another(tok, llama):
    fam, cfg, params = llama
    arrays, _ = sft.build(CONVS, tok, SHORT, seq_len=48)
    assert arrays["segment_ids"].max() >= 2  # conversations really share rows
    b = {k: jnp.asarray(v) for k, v in arrays.items()}
    packed = np.asarray(fam.apply(params, b["inputs"], cfg, positions=b["positions"], segment_ids=b["segment_ids"]))
    convs = iter(CONVS)
    for r in range(len(packed)):
        for s in range(1, arrays["segment_ids"][r].max() + 1):
            ids, _ = sft.encode(next(convs), tok, SHORT)
            alone = np.asarray(fam.apply(params, jnp.asarray(ids[None, :-1]), cfg))[0]
            np.testing.assert_allclose(packed[r][arrays["segment_ids"][r] == s], alone, atol=1e-5, rtol=1e-5)
    assert next(convs, None) is None


def test_pack_keeps_conversations_whole_and_counts_truncation():
    ex = [(np.arange(1, 6), np.ones(5, bool)), (np.arange(1, 8), np.ones(7, bool)), (np.arange(1, 30), np.ones(29, bool))]
    a, truncated = sft.pack(ex, seq_len=10)
    assert truncated == 1 and a["inputs"].shape == (2, 10)  # 4 + 6 slots fill row 1; the third (cut to 10) row 2
    assert a["segment_ids"][0].tolist() == [1] * 4 + [2] * 6 and a["positions"][0, 4:].tolist() == list(range(6))
    b, _ = sft.pack(ex[1:2] + ex[:1], seq_len=10)  # 6 + 4 fit too; a 7-slot one would not
    c, _ = sft.pack([ex[1], (np.arange(1, 9), np.ones(8, bool))], seq_len=10)
    assert b["inputs"].shape == (1, 10) and c["inputs"].shape == (2, 10) and c["weights"][0, 6:].sum() == 0


def test_chat_data_errors(tok):
    with pytest.raises(sft.ChatDataError, match="no 'messages' field .columns: \\['text'\\]"):
        sft.messages_column({"text": ["a"]})
    with pytest.raises(sft.ChatDataError, match="the tokenizer has no chat template"):
        sft.encode(CONVS[1], tok, None)
    with pytest.raises(sft.ChatDataError, match="no assistant message"):
        sft.encode([{"role": "user", "content": "hi"}], tok, CHATML)
    with pytest.raises(sft.ChatDataError, match="role 'bot'"):
        sft.encode([{"role": "bot", "content": "hi"}], tok, CHATML)


# ----------------------------------------------------------------------------------------------------- DPO

def _pairs(cfg, n=4, seed=0):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(1, cfg.vocab_size, rng.integers(3, 6)) for _ in range(n)]
    chosen = [rng.integers(1, cfg.vocab_size, rng.integers(2, 5)) for _ in range(n)]
    rejected = [rng.integers(1, cfg.vocab_size, rng.integers(2, 5)) for _ in range(n)]
    return dpo.build(prompts, chosen, rejected, seq_len=12)


def test_dpo_loss_is_ln2_when_policy_is_the_reference(llama):
    _, cfg, params = llama
    b = {k: jnp.asarray(v) for k, v in _pairs(cfg).items()}
    s = dpo.sums(params, b, cfg, beta=0.1, reference=params)
    assert abs(float(s["loss"] / s["weight"]) - math.log(2)) <= 1e-6
    pre = dpo.precompute_reference(params, _pairs(cfg), cfg)
    s2 = make_task("dpo", beta=0.5)(params, {k: jnp.asarray(v) for k, v in pre.items()}, None, cfg, False)
    assert abs(float(s2["loss"] / s2["weight"]) - math.log(2)) <= 1e-6


def test_dpo_loss_equals_trls_formula():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    pc, pr, rc, rr = (rng.normal(-20, 5, 16).astype(np.float32) for _ in range(4))
    for beta, ls in ((0.1, 0.0), (0.5, 0.2)):
        ours = dpo.loss(*(jnp.asarray(a) for a in (pc, pr, rc, rr)), beta=beta, label_smoothing=ls)
        # trl DPOTrainer.dpo_loss, loss_type="sigmoid"
        t = [torch.tensor(a, dtype=torch.float64) for a in (pc, pr, rc, rr)]
        logits = (t[0] - t[1]) - (t[2] - t[3])
        ref = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
        np.testing.assert_allclose(np.asarray(ours["loss"]), ref.numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(np.asarray(ours["chosen_reward"]), (beta * (t[0] - t[2])).numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(ours["rejected_reward"]), (beta * (t[1] - t[3])).numpy(), atol=1e-5)


def test_dpo_training_logs_reward_margins_and_prefers_chosen(llama):
    _, cfg, params = llama
    pre = dpo.precompute_reference(params, _pairs(cfg, n=4, seed=1), cfg)
    batch = {k: jnp.asarray(v) for k, v in pre.items()}
    opt = optax.adam(1e-3)
    step = jax.jit(make_train_step(make_task("dpo", beta=0.1, dropout=False), cfg, opt))
    state = create_state(0, cfg, opt, params=params)
    ms = []
    for _ in range(4):
        state, m = step(state, batch)
        ms.append(jax.device_get(m))
    for k in ("chosen_reward", "rejected_reward", "reward_margin", "accuracy", "loss"):
        assert k in ms[0], sorted(ms[0])
    assert abs(ms[0]["reward_margin"]) < 1e-6 and abs(ms[0]["loss"] - math.log(2)) < 1e-6  # starts at the ref
    assert ms[-1]["reward_margin"] > 0 and ms[-1]["loss"] < math.log(2) and ms[-1]["accuracy"] == 1.0
    np.testing.assert_allclose(ms[-1]["reward_margin"], ms[-1]["chosen_reward"] - ms[-1]["rejected_reward"],
                               rtol=1e-4, atol=1e-6)


def test_identical_chosen_and_rejected_is_an_error():
    with pytest.raises(dpo.PreferenceDataError, match="pair 1: chosen and rejected are identical"):
        dpo.build([[1, 2], [3]], [[4], [5, 6]], [[7], [5, 6]], seq_len=8)
