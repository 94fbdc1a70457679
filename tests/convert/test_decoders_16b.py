"""Hugging Face parity of the Gemma, Gemma 2, Phi-3 and GPT-Neo mappings: random-init tiny transformers models
built from configs (no network), imported and exported with logit parity (float32, <= 1e-4 both ways), and
greedy tokens from ``jaxlm.generate`` equal to transformers' ``generate`` on the same prompt. The preset
counts are checked against ``num_parameters()`` of the same transformers config built on the meta device."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm import count  # noqa: E402
from jaxlm.convert import hf  # noqa: E402
from jaxlm.generate import generate  # noqa: E402
from jaxlm.models import gemma, gemma2, gpt3, phi3  # noqa: E402
from tests.convert._hf_checks import randomize as _randomize  # noqa: E402
from tests.convert._hf_checks import torch_logits as _torch_logits  # noqa: E402

pytestmark = pytest.mark.hf
TOL = 1e-4



def _tokens(vocab, shape=(2, 13), seed=1):
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)



def _roundtrip(model, tmp_path, family, vocab):
    """Import ``model``'s checkpoint, compare logits, export it, reload in transformers, compare again, and
    compare greedy generation. Returns (loaded, max |dlogit| import, max |dlogit| export)."""
    model.save_pretrained(tmp_path / "hf")
    loaded = hf.load(tmp_path / "hf")
    assert loaded.family is family
    x = _tokens(vocab)
    ref = _torch_logits(model, x)
    ours = np.asarray(family.apply(loaded.params, jnp.asarray(x), loaded.config))
    err_in = np.abs(ours - ref).max()
    assert err_in < TOL, err_in
    back_dir = hf.save(loaded, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(back_dir).eval()
    assert type(back) is type(model)
    err_out = np.abs(_torch_logits(back, x) - ref).max()
    assert err_out < TOL, err_out

    prompt = x[0, :7].tolist()
    n_new = 10
    with torch.no_grad():
        want = model.generate(torch.tensor([prompt]), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                              pad_token_id=0)[0, len(prompt):].tolist()
    got = generate(loaded.params, loaded.config, [prompt], max_new_tokens=n_new, greedy=True).tokens[0]
    assert got == want
    print(f"{family.Config.family}: max |dlogit| import {err_in:.2e}, export {err_out:.2e}")
    return loaded, err_in, err_out


def _meta_count(config_cls, model_cls, **kw) -> int:
    with torch.device("meta"):
        return model_cls(config_cls(**kw)).num_parameters()


# ------------------------------------------------------------------------------------------------------------
# Gemma
def gemma_model(**kw):
    cfg = transformers.GemmaConfig(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=64, rms_norm_eps=1e-6, **kw)
    torch.manual_seed(0)
    return _randomize(transformers.GemmaForCausalLM(cfg))


def test_gemma_import_export_generate(tmp_path):
    loaded, _, _ = _roundtrip(gemma_model(), tmp_path, gemma, 300)
    c = loaded.config
    assert (c.n_heads, c.kv_heads, c.head_dim, c.norm, c.activation, c.embed_scale, c.tie_embeddings) == (
        4, 2, 16, "rmsnorm_1p", "geglu_tanh", True, True)


def test_gemma_preset_counts_match_transformers():
    assert gemma.PRESETS["gemma-2b"].n_params == 2_506_172_416
    assert _meta_count(transformers.GemmaConfig, transformers.GemmaForCausalLM, vocab_size=256000,
                       hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
                       num_key_value_heads=1, head_dim=256) == 2_506_172_416
    c = gemma.PRESETS["gemma-tiny"].config
    assert _meta_count(transformers.GemmaConfig, transformers.GemmaForCausalLM, vocab_size=c.vocab_size,
                       hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
                       num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads,
                       head_dim=c.head_dim) == count(gemma.spec(c))


def test_gemma_rejects_rope_scaling_and_biases():
    base = {"model_type": "gemma", "vocab_size": 300, "hidden_size": 48, "intermediate_size": 80,
            "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 16}
    with pytest.raises(hf.UnsupportedModelError, match=r"rope_type='linear'.*supports only rope_type 'default'"):
        hf.config_from_hf({**base, "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    with pytest.raises(hf.UnsupportedModelError, match=r"attention_bias=True"):
        hf.config_from_hf({**base, "attention_bias": True})


# ------------------------------------------------------------------------------------------------------------
# Phi-3: fused qkv_proj (unequal parts under grouped-query attention) and gate_up_proj
def phi3_model(**kw):
    cfg = transformers.Phi3Config(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)
    torch.manual_seed(0)
    return _randomize(transformers.Phi3ForCausalLM(cfg))


def test_phi3_import_export_generate(tmp_path):
    m = phi3_model(sliding_window=5)  # the release's every-layer window (2047 of 4096), shorter than the test
    loaded, _, _ = _roundtrip(m, tmp_path, phi3, 300)
    c = loaded.config
    assert (c.n_heads, c.kv_heads, c.head_dim, c.tie_embeddings) == (6, 2, 8, False)
    assert c.local_layers == (True, True) and c.sliding_window == 5
    # the fused tensors were split along their rows: q | k | v with 48 | 16 | 16 rows, gate | up
    sd = m.state_dict()
    qkv = sd["model.layers.1.self_attn.qkv_proj.weight"].numpy()
    np.testing.assert_array_equal(np.asarray(loaded.params["layers"]["attn"]["k"]["w"][1]).reshape(48, 16).T,
                                  qkv[48:64])
    gate_up = sd["model.layers.0.mlp.gate_up_proj.weight"].numpy()
    np.testing.assert_array_equal(np.asarray(loaded.params["layers"]["mlp"]["wi_1"]["w"][0]).T, gate_up[80:])


def test_phi3_preset_counts_match_transformers():
    assert phi3.PRESETS["phi3-mini"].n_params == 3_821_079_552
    assert _meta_count(transformers.Phi3Config, transformers.Phi3ForCausalLM) == 3_821_079_552  # the defaults
    c = phi3.PRESETS["phi3-tiny"].config
    assert _meta_count(transformers.Phi3Config, transformers.Phi3ForCausalLM, vocab_size=c.vocab_size,
                       hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
                       num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads,
                       pad_token_id=0) == count(phi3.spec(c))


def test_phi3_rejects_longrope_and_partial_rotary():
    base = {"model_type": "phi3", "vocab_size": 300, "hidden_size": 48, "intermediate_size": 80,
            "num_hidden_layers": 2, "num_attention_heads": 6, "max_position_embeddings": 4096}
    with pytest.raises(hf.UnsupportedModelError, match=r"rope_type='longrope'"):
        hf.config_from_hf({**base, "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 4,
                                                    "long_factor": [1.0] * 4}})
    with pytest.raises(hf.UnsupportedModelError, match=r"partial_rotary_factor=0.5"):
        hf.config_from_hf({**base, "partial_rotary_factor": 0.5})


# ------------------------------------------------------------------------------------------------------------
# Gemma 2: local/global alternation with a window shorter than the test sequence, soft-caps, post-norms
def gemma2_model(**kw):
    cfg = transformers.Gemma2Config(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    max_position_embeddings=64, sliding_window=5, query_pre_attn_scalar=24,
                                    attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
                                    attn_implementation="eager", **kw)
    torch.manual_seed(0)
    return _randomize(transformers.Gemma2ForCausalLM(cfg))


def test_gemma2_import_export_generate(tmp_path):
    m = gemma2_model()
    loaded, _, _ = _roundtrip(m, tmp_path, gemma2, 300)
    c = loaded.config
    assert c.local_layers == (True, False, True) and c.sliding_window == 5 and c.post_norms
    assert c.attn_scale == 24**-0.5 and (c.attn_softcap, c.final_logit_softcap) == (2.0, 3.0)
    # the window, the caps and the post-norms each matter at this size: switching one off moves the logits
    x = jnp.asarray(_tokens(300))
    ref = np.asarray(gemma2.apply(loaded.params, x, c))
    for change in ({"sliding_window": None}, {"attn_softcap": None}, {"final_logit_softcap": None}):
        assert np.abs(np.asarray(gemma2.apply(loaded.params, x, c.replace(**change))) - ref).max() > 1e-2, change


def test_gemma2_preset_counts_match_transformers():
    assert gemma2.PRESETS["gemma2-2b"].n_params == 2_614_341_888
    assert _meta_count(transformers.Gemma2Config, transformers.Gemma2ForCausalLM) == 2_614_341_888  # defaults
    c = gemma2.PRESETS["gemma2-tiny"].config
    assert _meta_count(transformers.Gemma2Config, transformers.Gemma2ForCausalLM, vocab_size=c.vocab_size,
                       hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
                       num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads,
                       head_dim=c.head_dim) == count(gemma2.spec(c))


# ------------------------------------------------------------------------------------------------------------
# GPT-Neo (the gpt3 family): global/local alternation (window shorter than the sequence), no q/k/v biases,
# unscaled attention scores
def gptneo_model():
    cfg = transformers.GPTNeoConfig(vocab_size=300, max_position_embeddings=64, hidden_size=32, num_layers=2,
                                    num_heads=4, attention_types=[[["global", "local"], 1]], window_size=4,
                                    bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return _randomize(transformers.GPTNeoForCausalLM(cfg), std=0.05)


def test_gptneo_import_export_generate(tmp_path):
    loaded, _, _ = _roundtrip(gptneo_model(), tmp_path, gpt3, 300)
    c = loaded.config
    assert c.local_layers == (False, True) and c.sliding_window == 4
    assert (c.qkv_bias, c.attn_scale, c.use_bias) == (False, 1.0, True)
    assert "b" not in loaded.params["layers"]["attn"]["q"] and "b" in loaded.params["layers"]["attn"]["o"]


def test_gpt3_presets_have_no_gptneo_form_but_gptneo_presets_do(tmp_path):
    from jaxlm.models.base import Loaded

    cfg = gpt3.PRESETS["gpt3-tiny"].config
    with pytest.raises(hf.UnsupportedModelError, match=r"qkv_bias=None .*'gpt_neo' models have False.*attn_scale"):
        hf.config_to_hf(gpt3, cfg)
    neo = gpt3.PRESETS["gpt-neo-125m"].config
    assert hf.config_to_hf(gpt3, neo)["attention_types"] == [[["global", "local"], 6]]
    small = neo.replace(n_layers=2, d_model=32, n_heads=4, d_ff=128, vocab_size=300, max_len=64, sliding_window=4)
    params = gpt3.init(__import__("jax").random.key(0), small)
    out = hf.save(Loaded(family=gpt3, config=small, params=params), tmp_path / "neo")
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = _tokens(300)
    np.testing.assert_allclose(_torch_logits(back, x), np.asarray(gpt3.apply(params, jnp.asarray(x), small)),
                               atol=TOL)


@pytest.mark.parametrize("name,L,D,H", [("gpt-neo-125m", 12, 768, 12), ("gpt-neo-1.3b", 24, 2048, 16),
                                        ("gpt-neo-2.7b", 32, 2560, 20)])
def test_gptneo_preset_counts_match_transformers(name, L, D, H):
    n = _meta_count(transformers.GPTNeoConfig, transformers.GPTNeoForCausalLM, num_layers=L, hidden_size=D,
                    num_heads=H, attention_types=[[["global", "local"], L // 2]])
    assert gpt3.PRESETS[name].n_params == n == count(gpt3.spec(gpt3.PRESETS[name].config))
