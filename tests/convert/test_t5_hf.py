"""T5 <-> Hugging Face ``T5ForConditionalGeneration``: logit parity for the v1.0 (ReLU, tied, rescaled head)
and v1.1 (gated GELU, untied head) layouts, import and export, from small random-init models built from
configs (no network); greedy and beam-search tokens through ``jaxlm.generate`` equal transformers'
``generate``; an unsupported ``feed_forward_proj`` is one clear error."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm import generate as G  # noqa: E402
from jaxlm import pretrained  # noqa: E402
from jaxlm.convert import hf  # noqa: E402
from jaxlm.models import t5  # noqa: E402
from tests.convert._hf_checks import randomize as _randomize  # noqa: E402

pytestmark = pytest.mark.hf
TOL = 1e-4
V = 96



def t5_model(v11: bool, n_dec: int | None = None):
    cfg = transformers.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=n_dec,
                                num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                feed_forward_proj="gated-gelu" if v11 else "relu", tie_word_embeddings=not v11,
                                dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    m = transformers.T5ForConditionalGeneration(cfg)
    if v11:  # transformers >= 5 builds every T5 with a tied head; v1.1 checkpoints carry their own lm_head
        m.lm_head = torch.nn.Linear(cfg.d_model, V, bias=False)
        m.config.tie_word_embeddings = False
    return _randomize(m)


def _inputs():
    rng = np.random.default_rng(1)
    src = rng.integers(2, V, (2, 23)).astype(np.int32)  # > max_distance: the log-spaced buckets are used
    valid = np.ones_like(src, bool)
    valid[1, 15:] = False
    src[1, 15:] = 0
    tgt = np.concatenate([np.zeros((2, 1), np.int32), rng.integers(2, V, (2, 21)).astype(np.int32)], 1)
    return src, valid, tgt


def _torch_logits(m, src, valid, tgt):
    with torch.no_grad():
        return m(input_ids=torch.tensor(src, dtype=torch.long), attention_mask=torch.tensor(valid.astype(np.int64)),
                 decoder_input_ids=torch.tensor(tgt, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("v11", [False, True], ids=["v1.0", "v1.1"])
def test_t5_import_export_logits(tmp_path, v11):
    m = t5_model(v11, n_dec=3 if v11 else None)
    m.save_pretrained(tmp_path / "hf")
    loaded = pretrained.load(tmp_path / "hf")
    c = loaded.config
    assert loaded.family is t5
    assert (c.activation, c.tie_embeddings, c.head_rescale) == (
        ("geglu_tanh", False, False) if v11 else ("relu", True, True))
    assert (c.n_layers, c.dec_layers, c.head_dim, c.rel_buckets, c.rel_max_distance) == (
        2, 3 if v11 else 2, 8, 8, 20)
    assert (c.bos_id, c.eos_id, c.pad_id) == (0, 1, 0)  # T5's decoder start is <pad>
    src, valid, tgt = _inputs()
    ref = _torch_logits(m, src, valid, tgt)
    ours = np.asarray(t5.apply(loaded.params, jnp.asarray(src), jnp.asarray(tgt), c, src_valid=jnp.asarray(valid)))
    err = np.abs(ours - ref).max()
    assert err < TOL, err
    out = hf.save(loaded, tmp_path / "out")
    back = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
    assert (back.lm_head.weight is back.shared.weight) == (not v11)
    back_err = np.abs(_torch_logits(back, src, valid, tgt) - ref).max()
    print(f"t5 {'v1.1' if v11 else 'v1.0'}: max |dlogit| import {err:.3g}, after export {back_err:.3g}")
    assert back_err < TOL


@pytest.mark.parametrize("v11", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["v1.0", "v1.1"])
def test_t5_greedy_and_beam_generation_equal_transformers(tmp_path, v11):
    m = t5_model(v11)
    m.save_pretrained(tmp_path / "hf")
    loaded = pretrained.load(tmp_path / "hf")
    src, valid, _ = _inputs()
    prompts = [src[0].tolist(), src[1, :15].tolist()]
    ids, mask = torch.tensor(src, dtype=torch.long), torch.tensor(valid.astype(np.int64))
    n = 12
    # eos_token_id=-1-free runs: a random model rarely emits </s>; both sides still stop at it when it does
    with torch.no_grad():
        hf_greedy = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, num_beams=1)
        hf_beam = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, num_beams=3,
                             length_penalty=0.0, early_stopping=True)

    def strip(row):  # drop the decoder start token, and everything from </s> on (padding included)
        row = row.tolist()[1:]
        return row[: row.index(1)] if 1 in row else row

    greedy = G.generate(loaded.params, loaded.config, prompts, max_new_tokens=n, greedy=True)
    assert greedy.tokens == [strip(r) for r in hf_greedy]
    beam = G.beam_search(loaded.params, loaded.config, prompts, beam_size=3, max_new_tokens=n, length_penalty=0.0)
    assert beam.tokens == [strip(r) for r in hf_beam]


def test_t5_unsupported_feed_forward_proj_is_one_clear_error(tmp_path):
    m = t5_model(False)
    m.save_pretrained(tmp_path / "hf")
    hc = json.loads((tmp_path / "hf" / "config.json").read_text())
    hc["feed_forward_proj"] = "gated-relu"
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hc))
    with pytest.raises(hf.UnsupportedModelError, match=r"feed_forward_proj='gated-relu'.*'relu', 'gated-gelu'"):
        pretrained.load(tmp_path / "hf")


@pytest.mark.parametrize("name", ["t5-small", "t5-base", "t5-v1_1-small"])
def test_t5_preset_counts_equal_transformers(name):
    from jaxlm import count

    cfg = t5.PRESETS[name].config
    hc = hf.config_to_hf(t5, cfg)
    with torch.device("meta"):
        m = transformers.T5ForConditionalGeneration(transformers.T5Config(**{
            k: v for k, v in hc.items() if k not in ("architectures", "model_type")}))
        if not cfg.tie_embeddings:  # transformers >= 5 ties every T5 head at construction (see t5_model)
            m.lm_head = torch.nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
    assert m.num_parameters() == count(t5.spec(cfg)) == t5.PRESETS[name].n_params


def test_t5_convert_cli_roundtrip(tmp_path):
    from jaxlm import cli

    m = t5_model(True, n_dec=3)
    m.save_pretrained(tmp_path / "hf")
    assert cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--to", str(tmp_path / "jx")]) == 0
    assert json.loads((tmp_path / "jx" / "config.json").read_text())["family"] == "t5"
    assert cli.main(["convert", "--to-hf", str(tmp_path / "jx"), "--out", str(tmp_path / "hf2")]) == 0
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf2").eval()
    src, valid, tgt = _inputs()
    assert back.config.num_decoder_layers == 3 and back.config.feed_forward_proj == "gated-gelu"
    assert np.abs(_torch_logits(back, src, valid, tgt) - _torch_logits(m, src, valid, tgt)).max() < TOL
