"""``jaxlm generate``: a tiny GPT-2 saved as a Hugging Face directory (with a byte-level BPE tokenizer trained
here) is loaded through ``jaxlm.pretrained.load``; the streamed text must equal what the library generates."""

from __future__ import annotations

import jax
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jaxlm import pretrained
from jaxlm.commands import generate as cli
from jaxlm.convert import hf
from jaxlm.data import text
from jaxlm.generate import beam_search, stream
from jaxlm.models import get

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine"] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    mod, cfg = get("gpt2-tiny")
    params = mod.init(jax.random.key(0), cfg)
    return hf.save((mod, cfg, params), tmp_path_factory.mktemp("hf") / "tiny", tokenizer=tok)


@pytest.fixture(scope="module")
def loaded(hf_dir):
    return pretrained.load(hf_dir)


def _run(capsys, argv):
    rc = cli.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_streams_what_generate_returns(hf_dir, loaded, capsys):
    ids = loaded.tokenizer.encode(PROMPT).ids
    tok = loaded.tokenizer
    # the model has 512 ids, its tokenizer 300: the CLI samples only the tokenizer's ids
    limit = text.id_bound(tok)
    assert limit < loaded.config.vocab_size
    # the CLI streams; stream == generate is tested in tests/test_generate.py
    greedy = list(stream(loaded.params, loaded.config, ids, max_new_tokens=8, greedy=True, vocab_limit=limit))
    rc, out, err = _run(capsys, [str(hf_dir), "--prompt", PROMPT, "--greedy", "--max-new-tokens", "8"])
    assert rc == 0, err
    assert out == PROMPT + tok.decode(greedy) + "\n"
    sampled = list(stream(loaded.params, loaded.config, ids, max_new_tokens=8, temperature=0.7, top_k=20, seed=5,
                          vocab_limit=limit))
    rc, out, _ = _run(capsys, [str(hf_dir), "--prompt", PROMPT, "--temperature", "0.7", "--top-k", "20",
                               "--seed", "5", "--max-new-tokens", "8"])
    assert rc == 0 and out == PROMPT + tok.decode(sampled) + "\n"
    beam = beam_search(loaded.params, loaded.config, [ids], beam_size=2, max_new_tokens=4,
                       vocab_limit=limit).tokens[0]
    rc, out, _ = _run(capsys, [str(hf_dir), "--prompt-ids", ",".join(map(str, ids)), "--beam", "2",
                               "--max-new-tokens", "4"])
    assert rc == 0 and out == tok.decode(beam) + "\n"


@pytest.mark.parametrize("argv, match", [
    (["--prompt", "x", "--greedy", "--top-k", "3"], "--greedy takes the most likely token"),
    (["--prompt", "x", "--beam", "2", "--temperature", "0.5"], "--beam runs beam search"),
    (["--prompt", "x", "--top-p", "1.5"], "top_p=1.5 must be in \\(0, 1\\]"),
    (["--prompt", "x", "--max-new-tokens", "500"], "exceeds the model's context max_len=128"),
    (["--prompt-ids", "1,a"], "comma-separated integers"),
    (["--prompt", "x", "--chat"], "has no chat template: drop --chat"),
])
def test_cli_errors(hf_dir, capsys, argv, match):
    import re

    rc, out, err = _run(capsys, [str(hf_dir), *argv])
    assert rc == 2 and re.search(match, err), err
    assert out.strip() == ""  # nothing half-printed before the error


def test_cli_missing_path(tmp_path, capsys):
    rc, _, err = _run(capsys, [str(tmp_path / "nope"), "--prompt", "x"])
    assert rc == 2 and "does not exist" in err
