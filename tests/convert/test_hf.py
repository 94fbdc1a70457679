"""Hugging Face import/export parity: small random-init transformers models built from configs (no network)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm import pretrained  # noqa: E402
from jaxlm.convert import hf  # noqa: E402
from jaxlm.models import bert, gpt2, llama, mistral  # noqa: E402
from tests.convert._hf_checks import randomize as _randomize  # noqa: E402
from tests.convert._hf_checks import torch_logits as _torch_logits  # noqa: E402

pytestmark = pytest.mark.hf
TOL = 1e-4



def _tokens(vocab, shape=(2, 11), seed=1):
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)



def _save(model, path):
    model.save_pretrained(path)
    return path


def gpt2_model():
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                  activation_function="gelu_new", layer_norm_epsilon=1e-5,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return _randomize(transformers.GPT2LMHeadModel(cfg))


def llama_model(tied=False):
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                   rms_norm_eps=1e-6, rope_theta=5000.0, tie_word_embeddings=tied)
    torch.manual_seed(0)
    return _randomize(transformers.LlamaForCausalLM(cfg))


def test_gpt2_import_export_logits(tmp_path):
    m = gpt2_model()
    loaded = pretrained.load(_save(m, tmp_path / "hf"))
    assert loaded.family is gpt2 and loaded.config.activation == "gelu_tanh" and loaded.config.tie_embeddings
    assert (loaded.config.n_layers, loaded.config.d_model, loaded.config.max_len) == (2, 32, 32)
    x = _tokens(300)
    ref = _torch_logits(m, x)
    ours = np.asarray(gpt2.apply(loaded.params, jnp.asarray(x), loaded.config))
    assert np.abs(ours - ref).max() < TOL
    out = hf.save(loaded, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert np.abs(_torch_logits(back, x) - ref).max() < TOL


@pytest.mark.parametrize("tied", [False, True])
def test_llama_gqa_import_export_logits(tmp_path, tied):
    m = llama_model(tied)
    loaded = hf.load(_save(m, tmp_path / "hf"))
    c = loaded.config
    assert loaded.family is llama and (c.n_heads, c.kv_heads, c.head_dim) == (6, 2, 8)
    assert c.rope_theta == 5000.0 and c.norm_eps == 1e-6 and c.tie_embeddings == tied
    x = _tokens(300)
    ref = _torch_logits(m, x)
    assert np.abs(np.asarray(llama.apply(loaded.params, jnp.asarray(x), c)) - ref).max() < TOL
    back = transformers.AutoModelForCausalLM.from_pretrained(hf.save(loaded, tmp_path / "out")).eval()
    assert np.abs(_torch_logits(back, x) - ref).max() < TOL


def test_mistral_config_without_sliding_window(tmp_path):
    cfg = transformers.MistralConfig(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                     num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=64,
                                     head_dim=16, sliding_window=None)
    torch.manual_seed(0)
    m = _randomize(transformers.MistralForCausalLM(cfg))
    loaded = hf.load(_save(m, tmp_path / "hf"))
    assert loaded.family is mistral and loaded.config.head_dim == 16 and loaded.config.kv_heads == 3
    assert loaded.config.sliding_window is None
    x = _tokens(300)
    ref = _torch_logits(m, x)
    assert np.abs(np.asarray(llama.apply(loaded.params, jnp.asarray(x), loaded.config)) - ref).max() < TOL
    back = transformers.AutoModelForCausalLM.from_pretrained(hf.save(loaded, tmp_path / "out")).eval()
    assert type(back).__name__ == "MistralForCausalLM"
    assert np.abs(_torch_logits(back, x) - ref).max() < TOL


def _bert_cfg(**kw):
    return transformers.BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=40, type_vocab_size=2, **kw)


def test_bert_mlm_import_export_logits_with_padding(tmp_path):
    torch.manual_seed(0)
    m = _randomize(transformers.BertForMaskedLM(_bert_cfg()))
    loaded = hf.load(_save(m, tmp_path / "hf"))
    c = loaded.config
    assert loaded.family is bert and c.heads == ("mlm",) and not c.pooler and c.activation == "gelu"
    assert c.norm_eps == 1e-12
    x = _tokens(200, (2, 9))
    valid = np.ones_like(x, bool)
    valid[1, 6:] = False
    types = np.zeros_like(x)
    types[:, 4:] = 1
    with torch.no_grad():
        ref = m(torch.tensor(x, dtype=torch.long), attention_mask=torch.tensor(valid.astype(np.int64)),
                token_type_ids=torch.tensor(types, dtype=torch.long)).logits.numpy()
    ours = np.asarray(bert.apply(loaded.params, jnp.asarray(x), c, token_types=jnp.asarray(types),
                                 valid=jnp.asarray(valid))["mlm_logits"])
    assert np.abs(ours - ref)[valid].max() < TOL
    back = transformers.AutoModelForMaskedLM.from_pretrained(hf.save(loaded, tmp_path / "out")).eval()
    with torch.no_grad():
        ref2 = back(torch.tensor(x, dtype=torch.long), attention_mask=torch.tensor(valid.astype(np.int64)),
                    token_type_ids=torch.tensor(types, dtype=torch.long)).logits.numpy()
    assert np.abs(ref2 - ref)[valid].max() < TOL


def test_bert_span_head(tmp_path):
    torch.manual_seed(0)
    m = _randomize(transformers.BertForQuestionAnswering(_bert_cfg()))
    loaded = hf.load(_save(m, tmp_path / "hf"))
    assert loaded.config.heads == ("span",)
    x = _tokens(200, (2, 9))
    with torch.no_grad():
        ref = m(torch.tensor(x, dtype=torch.long))
    out = bert.apply(loaded.params, jnp.asarray(x), loaded.config)
    assert np.abs(np.asarray(out["start_logits"]) - ref.start_logits.numpy()).max() < TOL
    assert np.abs(np.asarray(out["end_logits"]) - ref.end_logits.numpy()).max() < TOL
    back = transformers.AutoModelForQuestionAnswering.from_pretrained(hf.save(loaded, tmp_path / "o")).eval()
    with torch.no_grad():
        assert np.abs(back(torch.tensor(x, dtype=torch.long)).start_logits.numpy() - ref.start_logits.numpy()).max() < TOL


def test_bert_classifier_and_pooler(tmp_path):
    torch.manual_seed(0)
    m = _randomize(transformers.BertForSequenceClassification(_bert_cfg(num_labels=3)))
    loaded = hf.load(_save(m, tmp_path / "hf"))
    c = loaded.config
    assert c.heads == ("classifier",) and c.pooler and c.num_labels == 3
    x = _tokens(200, (2, 9))
    ref = _torch_logits(m, x)
    assert np.abs(np.asarray(bert.apply(loaded.params, jnp.asarray(x), c)["logits"]) - ref).max() < TOL
    back = transformers.AutoModelForSequenceClassification.from_pretrained(hf.save(loaded, tmp_path / "o")).eval()
    assert np.abs(_torch_logits(back, x) - ref).max() < TOL


def test_export_from_jaxlm_init_loads_in_transformers(tmp_path):
    """A model that never came from HF (jaxlm init, with a tokenizer) exports and transformers agrees."""
    import jax
    from tokenizers import Tokenizer, models, pre_tokenizers

    cfg = llama.PRESETS["llama-tiny"].config
    params = llama.init(jax.random.key(0), cfg)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(cfg.vocab_size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    out = hf.save((llama, cfg, params), tmp_path / "out", tokenizer=tok)
    assert (out / "tokenizer.json").is_file()
    x = _tokens(cfg.vocab_size)
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ours = np.asarray(llama.apply(params, jnp.asarray(x), cfg))
    assert np.abs(_torch_logits(back, x) - ours).max() < TOL
    again = hf.load(out)
    assert again.tokenizer.encode("w5 w7").ids == [5, 7]
    assert transformers.AutoTokenizer.from_pretrained(out)("w5 w7")["input_ids"] == [5, 7]


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_config_and_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.load(tmp_path / "empty")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps(gpt2_model().config.to_dict()))
    with pytest.raises(FileNotFoundError, match="no weights"):
        hf.load(tmp_path / "noweights")
    (tmp_path / "noweights" / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        hf.load(tmp_path / "noweights")


def test_unsupported_architectures(tmp_path):
    bart = transformers.BartConfig(vocab_size=100, d_model=16, encoder_layers=1, decoder_layers=1,
                                   encoder_attention_heads=4, decoder_attention_heads=4)
    with pytest.raises(hf.UnsupportedModelError, match=r"model_type 'bart'.*supported model_type values.*'gpt2'"):
        hf.config_from_hf(bart.to_dict())
    lc = llama_model().config.to_dict()
    lc["rope_scaling"] = {"rope_type": "yarn", "factor": 8.0}
    with pytest.raises(hf.UnsupportedModelError, match="rope_scaling.rope_type='yarn'.*supported rope_type values"):
        hf.config_from_hf(lc)
    # a Mistral sliding window, rejected before issue 16, now loads as the mistral family
    mc = transformers.MistralConfig(max_position_embeddings=4096, sliding_window=1024).to_dict()
    assert hf.config_from_hf(mc)[1].sliding_window == 1024


def test_shape_mismatch_between_config_and_weights(tmp_path):
    d = _save(gpt2_model(), tmp_path / "hf")
    c = json.loads((d / "config.json").read_text())
    c["n_inner"] = 100  # the weights have 128
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match=r"shape mismatch: transformer\.h\.0\.mlp\.c_fc\.weight"):
        hf.load(d)


def test_tokenizer_vocab_mismatch(tmp_path):
    from tokenizers import Tokenizer, models

    d = _save(gpt2_model(), tmp_path / "hf")
    Tokenizer(models.WordLevel({f"t{i}": i for i in range(1000)}, unk_token="t0")).save(str(d / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"1000 tokens.*vocab_size is 300"):
        hf.load(d)


def test_pytorch_bin_checkpoint(tmp_path):
    m = gpt2_model()
    m.save_pretrained(tmp_path / "bin", safe_serialization=False) if "safe_serialization" in \
        m.save_pretrained.__code__.co_varnames else None
    d = tmp_path / "bin"
    if not (d / "pytorch_model.bin").is_file():  # transformers 5 writes only safetensors: write the .bin by hand
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text(m.config.to_json_string())
        torch.save(m.state_dict(), d / "pytorch_model.bin")
        for f in d.glob("*.safetensors"):
            f.unlink()
    x = _tokens(300)
    loaded = hf.load(d)
    assert np.abs(np.asarray(gpt2.apply(loaded.params, jnp.asarray(x), loaded.config)) - _torch_logits(m, x)).max() < TOL


def test_hub_id_goes_through_snapshot_download(tmp_path, monkeypatch):
    """A name that is not a local path is fetched with huggingface_hub (stubbed here: no network in tests)."""
    hub = pytest.importorskip("huggingface_hub")
    local = _save(gpt2_model(), tmp_path / "snap")
    asked = []

    def fake(repo_id, **kw):
        asked.append(repo_id)
        if repo_id != "someone/tiny-gpt2":
            raise hub.errors.RepositoryNotFoundError(f"{repo_id} not found")
        return str(local)

    monkeypatch.setattr(hub, "snapshot_download", fake)
    loaded = pretrained.load("someone/tiny-gpt2")
    assert loaded.family is gpt2 and asked == ["someone/tiny-gpt2"]
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a hub id"):
        hf.load("someone/missing")


def test_sentence_transformers_subfolder_layout(tmp_path):
    """Older sentence-transformers saves keep the BERT model in 0_Transformer/ (named by modules.json)."""
    torch.manual_seed(0)
    m = _randomize(transformers.BertModel(_bert_cfg()))
    root = tmp_path / "st"
    m.save_pretrained(root / "0_Transformer")
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    loaded = hf.load(root)
    assert loaded.config.pooler and loaded.extra["sentence_transformers"] == {
        "pooling": "cls", "normalize": False, "max_seq_length": 40}
    x = _tokens(200, (2, 9))
    with torch.no_grad():
        ref = m(torch.tensor(x, dtype=torch.long))
    out = bert.apply(loaded.params, jnp.asarray(x), loaded.config)
    assert np.abs(np.asarray(out["hidden"]) - ref.last_hidden_state.numpy()).max() < TOL
    assert np.abs(np.asarray(out["pooled"]) - ref.pooler_output.numpy()).max() < TOL
