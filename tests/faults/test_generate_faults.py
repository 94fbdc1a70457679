"""Generation faults: bad sampling arguments are one clear error; a prompt with characters the tokenizer does
not know warns once; a model and tokenizer that disagree are refused (tokenizer larger) or sampling is
restricted to the tokenizer's ids (model larger: its extra ids decode to nothing)."""

from __future__ import annotations

import jax
import pytest

from jaxlm import pretrained
from jaxlm.commands import generate as gen_cmd
from jaxlm.data import text
from jaxlm.generate import beam_search, generate
from jaxlm.models import base, gpt2

CFG = gpt2.Config(vocab_size=64, max_len=32, d_model=32, n_heads=2, n_layers=1, d_ff=64)
CORPUS = ["the cat sat on a mat"]  # char tokenizer: 5 specials + 10 characters = 15 ids


@pytest.fixture(scope="module")
def params():
    return gpt2.init(jax.random.key(0), CFG)


BAD = [
    (dict(temperature=float("nan")), "temperature=nan must be >= 0 and finite"),
    (dict(temperature=float("inf")), "temperature=inf must be >= 0 and finite"),
    (dict(temperature=-0.5), "temperature=-0.5 must be >= 0"),
    (dict(top_p=0.0), "top_p=0.0 must be in (0, 1]"),
    (dict(top_p=1.5), "top_p=1.5 must be in (0, 1]"),
    (dict(top_p=float("nan")), "top_p=nan must be in (0, 1]"),
    (dict(top_k=0), "top_k=0 must be a positive integer"),
    (dict(seed=-1), "seed=-1 must be an integer >= 0"),
    (dict(vocab_limit=0), "vocab_limit=0 must be a positive integer"),
    (dict(vocab_limit=65), "vocab_limit=65 exceeds the model's vocab_size=64: the tokenizer is not this model's"),
    (dict(max_new_tokens=0), "max_new_tokens=0 must be a positive integer"),
]


@pytest.mark.parametrize("kw,message", BAD, ids=[str(k) for k, _ in BAD])
def test_bad_sampling_arguments_are_one_clear_error(params, kw: dict, message: str):
    kw = {"max_new_tokens": 2} | kw
    with pytest.raises(ValueError) as e:
        generate(params, CFG, [[1, 2, 3]], **kw)
    assert message in str(e.value)


@pytest.mark.parametrize("kw,message", [(dict(length_penalty=float("inf")), "length_penalty=inf must be"),
                                        (dict(beam_size=0), "beam_size=0 must be a positive integer"),
                                        (dict(vocab_limit=100), "vocab_limit=100 exceeds")])
def test_bad_beam_arguments_are_one_clear_error(params, kw: dict, message: str):
    kw = {"beam_size": 2, "max_new_tokens": 2} | kw
    with pytest.raises(ValueError, match=message):
        beam_search(params, CFG, [[1, 2, 3]], **kw)


def test_vocab_limit_restricts_sampling_greedy_and_beams_to_the_tokenizers_ids(params):
    prompts = [[1, 2, 3], [4, 5]]
    free = generate(params, CFG, prompts, max_new_tokens=12, seed=0)
    # a random model samples all over its 64 ids: without the limit, ids the tokenizer lacks come out
    assert max(max(t) for t in free.tokens) >= 15
    for kw in (dict(seed=0), dict(greedy=True)):
        out = generate(params, CFG, prompts, max_new_tokens=12, vocab_limit=15, **kw)
        assert all(len(t) == 12 and max(t) < 15 for t in out.tokens), kw
    beams = beam_search(params, CFG, prompts, beam_size=2, max_new_tokens=4, vocab_limit=15)
    assert all(max(t) < 15 for b in beams.beams for t in b)


def test_unknown_chars_lists_each_unknown_piece_once():
    tok = text.char_tokenizer(CORPUS)
    assert text.id_bound(tok) == 15
    assert text.unknown_chars(tok, "the cat") == []
    assert text.unknown_chars(tok, "the Zebra é Zé <unk>") == ["Z", "b", "r", "é"]
    bpe = text.bpe_tokenizer(CORPUS * 50, vocab_size=300)
    assert text.unknown_chars(bpe, "Zébra ∑") == []  # byte-level: nothing is unknown


def _fake_load(monkeypatch, params, cfg, tok):
    loaded = base.Loaded(family=gpt2, config=cfg, params=params, tokenizer=tok,
                         extra={"specials": text.special_ids(tok)}, source="run")
    monkeypatch.setattr(pretrained, "kind", lambda path: "run")
    monkeypatch.setattr(pretrained, "load", lambda path, **kw: loaded)


def test_cli_warns_once_about_unknown_prompt_characters_and_samples_only_tokenizer_ids(
        params, monkeypatch, capsys):
    tok = text.char_tokenizer(CORPUS)
    _fake_load(monkeypatch, params, CFG, tok)
    shown: list[int] = []
    add = gen_cmd._Printer.add

    def record(self, token=None, final=False):
        if token is not None:
            shown.append(token)
        add(self, token, final)

    monkeypatch.setattr(gen_cmd._Printer, "add", record)
    assert gen_cmd.main(["run", "--prompt", "the Zebra at Zé", "--max-new-tokens", "12", "--ignore-eos",
                         "--temperature", "2"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("jaxlm generate: warning: the tokenizer does not know 'Z', 'b', 'r', 'é' in the "
                             "prompt; they become the unknown token")
    assert len(shown) == 12 and max(shown) < 15  # the model's ids 15..63 decode to nothing: never sampled

    shown.clear()
    assert gen_cmd.main(["run", "--prompt", "the cat", "--max-new-tokens", "12", "--ignore-eos"]) == 0
    assert capsys.readouterr().err == ""


def test_cli_refuses_a_tokenizer_with_more_ids_than_the_model(monkeypatch, capsys):
    cfg = gpt2.Config(vocab_size=12, max_len=32, d_model=32, n_heads=2, n_layers=1, d_ff=64)
    _fake_load(monkeypatch, gpt2.init(jax.random.key(0), cfg), cfg, text.char_tokenizer(CORPUS))
    rc = gen_cmd.main(["run", "--prompt", "the cat", "--max-new-tokens", "4"])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert err.endswith("the tokenizer of run has 15 ids but the model's vocab_size is 12: they do not belong "
                        "together; use the tokenizer the model was trained with.")
    assert "Traceback" not in err and len(err.splitlines()) == 1
