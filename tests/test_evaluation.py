"""jaxlm.evaluation (SQuAD EM/F1, span decoding to passage text) and the experiment files of issue 7."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import evaluation as E
from jaxlm.data import text
from jaxlm.models import bert, get
from jaxlm.models.base import Loaded
from jaxlm.train import config as C


def test_squad_normalisation_and_scores():
    assert E.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert E.normalize_answer("an apple, a pear") == "apple pear"
    assert E.exact_match("the Beatles", "Beatles.") == 1.0
    assert E.exact_match("Beatles band", "Beatles") == 0.0
    # prediction "paris france" vs truth "paris": precision 1/2, recall 1 -> F1 2/3
    assert E.f1("Paris, France", "Paris") == pytest.approx(2 / 3)
    assert E.f1("London", "Paris") == 0.0
    assert E.f1("", "") == 1.0 and E.f1("a", "x") == 0.0  # "a" normalises to empty
    s = E.squad_scores(["Paris", "London"], ["paris", "Rome"])
    assert s == {"exact_match": 50.0, "f1": 50.0}
    with pytest.raises(ValueError, match="2 predictions but 1 answers"):
        E.squad_scores(["a", "b"], ["a"])


def _span_model():
    passage_words = "the cat sat on the red mat"
    tok = text.char_tokenizer([passage_words + "where?"])
    cfg = get("bert-tiny")[1].replace(vocab_size=tok.get_vocab_size(), heads=("span",))
    params = bert.init(jax.random.key(0), cfg)
    return Loaded(family=bert, config=cfg, params=params, tokenizer=tok, extra={"specials": text.special_ids(tok)})


def test_predict_spans_maps_the_best_valid_span_back_to_passage_text(monkeypatch):
    loaded = _span_model()
    q, p = "where?", "the cat sat on the red mat"
    off = 1 + len(q) + 1  # [bos] question [eos] then the passage (one token per character)
    want0, want1 = p.index("red"), p.index("red") + 2

    def fake_apply(params, tokens, cfg, valid=None):
        B, T = tokens.shape
        start = jnp.zeros((B, T)).at[:, off + want0].set(5.0)
        end = jnp.zeros((B, T)).at[:, off + want1].set(5.0)
        # a higher end logit *before* the start must not be chosen (end >= start)
        end = end.at[:, off + 1].set(9.0)
        # and the question tokens, where the highest start logit sits, are not passage tokens
        start = start.at[:, 2].set(50.0)
        return {"start_logits": start, "end_logits": end}

    monkeypatch.setattr(bert, "apply", fake_apply)
    assert E.predict_spans(loaded, [q, q], [p, p], seq_len=64) == ["red", "red"]
    # a maximum answer length of 2 tokens rules "red" (3 tokens) out
    got = E.predict_spans(loaded, [q], [p], seq_len=64, max_answer_tokens=2)[0]
    assert got != "red" and got in p


def test_predict_spans_runs_the_real_model():
    loaded = _span_model()
    out = E.predict_spans(loaded, ["where?"], ["the cat sat on the red mat"], seq_len=48)
    assert out[0] and out[0] in "the cat sat on the red mat"
    with pytest.raises(ValueError, match="span head"):
        E.predict_spans(Loaded(family=bert, config=loaded.config.replace(heads=()), params={},
                               tokenizer=loaded.tokenizer), ["q"], ["p"])


@pytest.mark.parametrize("path,preset", [("experiments/summarize_samsum.py", "transformer-tiny"),
                                         ("experiments/qa_squad.py", "bert-tiny"),
                                         ("experiments/cpu_multi30k.py", "transformer-tiny"),
                                         ("experiments/cpu_sst2.py", "bert-tiny")])
def test_issue7_experiments_resolve(path, preset, shared_data):
    full = C.resolve(C.load_experiment(path))
    assert full.train.steps > 0 and full.data.path
    tiny = C.resolve(C.apply_overrides(C.load_experiment(path), [f"model.preset={preset}", "data.seq_len=64"]))
    assert tiny.model.n_layers == get(preset)[1].n_layers
    if path.endswith("qa_squad.py"):
        assert tiny.model.heads == ("span",)


def test_qa_minilm_overrides_give_the_minilm_shape():
    import importlib.util

    spec = importlib.util.spec_from_file_location("qa_squad", "experiments/qa_squad.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = C.apply_overrides(mod.config(), mod.minilm_overrides("/tmp/init"))
    assert (run.model.d_model, run.model.n_heads, run.model.n_layers, run.model.vocab_size) == (384, 12, 6, 30522)
    assert run.train.init_from == "/tmp/init"
    assert np.isclose(run.model.norm_eps, 1e-12)
