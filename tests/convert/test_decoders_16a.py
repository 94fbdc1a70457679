"""Issue 16 (part a): Qwen2 (q/k/v biases), Mistral (sliding window shorter than the sequence) and Llama 3.1
(llama3 RoPE scaling) against transformers: logits both directions (random-init tiny models built from
configs, no network), greedy tokens of jaxlm.generate vs transformers' generate (past the window for
Mistral), preset counts vs transformers' num_parameters() on the meta device, and the import errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm import count, generate  # noqa: E402
from jaxlm.convert import hf  # noqa: E402
from jaxlm.models import REGISTRY, llama, mistral, qwen2  # noqa: E402
from tests.convert._hf_checks import randomize as _randomize  # noqa: E402
from tests.convert._hf_checks import torch_logits as _torch_logits  # noqa: E402

pytestmark = pytest.mark.hf
TOL = 1e-4
V = 300
SMALL = dict(vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
             num_key_value_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=None,
             pad_token_id=None)



def qwen2_model():
    cfg = transformers.Qwen2Config(**SMALL, rope_theta=100000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    torch.manual_seed(0)
    return _randomize(transformers.Qwen2ForCausalLM(cfg))


def mistral_model():
    cfg = transformers.MistralConfig(**SMALL, sliding_window=4, head_dim=8)
    torch.manual_seed(0)
    return _randomize(transformers.MistralForCausalLM(cfg))


def llama31_model():
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    cfg = transformers.LlamaConfig(**SMALL, rope_parameters=rope)
    torch.manual_seed(0)
    return _randomize(transformers.LlamaForCausalLM(cfg))


CASES = {"qwen2": (qwen2_model, qwen2), "mistral": (mistral_model, mistral), "llama3.1": (llama31_model, llama)}


@pytest.mark.parametrize("case", list(CASES))
def test_import_export_logits_and_greedy_generation(tmp_path, case):
    build, family = CASES[case]
    m = build()
    m.save_pretrained(tmp_path / "hf")
    loaded = hf.load(tmp_path / "hf")
    c = loaded.config
    assert loaded.family is family
    if case == "qwen2":
        assert c.qkv_bias and not c.use_bias and c.tie_embeddings and c.sliding_window is None
        assert "b" in loaded.params["layers"]["attn"]["k"] and "b" not in loaded.params["layers"]["attn"]["o"]
    if case == "mistral":
        assert c.sliding_window == 4 and all(c.local_layers) and c.head_dim == 8
    if case == "llama3.1":
        assert (c.rope_type, c.rope_factor, c.rope_original_max_len, c.rope_theta) == ("llama3", 8.0, 16, 500000.0)
    x = np.random.default_rng(1).integers(0, V, (2, 13)).astype(np.int32)  # 13 > the window 4
    ref = _torch_logits(m, x)
    got = np.asarray(family.apply(loaded.params, jnp.asarray(x), c))
    err = np.abs(got - ref).max()
    assert err < TOL, err
    # the feature matters at this length: switched off, the logits move far beyond the tolerance
    plain = {"qwen2": None, "mistral": c.replace(sliding_window=None), "llama3.1": c.replace(rope_type="default")}[case]
    if plain is not None:
        assert np.abs(np.asarray(family.apply(loaded.params, jnp.asarray(x), plain)) - ref).max() > 100 * TOL
    back = transformers.AutoModelForCausalLM.from_pretrained(hf.save(loaded, tmp_path / "out")).eval()
    assert type(back).__name__ == type(m).__name__
    back_err = np.abs(_torch_logits(back, x) - ref).max()
    print(f"{case}: max |dlogit| import {err:.3g}, after export {back_err:.3g}")  # pytest -s: the closing note's numbers
    assert back_err < TOL
    # greedy: 12 new tokens after a 5-token prompt (17 > 4: Mistral decodes far past its window)
    prompt = [int(t) for t in x[0, :5]]
    with torch.no_grad():
        want = m.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, 5:].tolist()
    out = generate.generate(loaded.params, c, [prompt], max_new_tokens=12, greedy=True)
    assert out.tokens[0] == want


@pytest.mark.parametrize("name,cls,tied", [
    ("qwen2.5-0.5b", "Qwen2", True), ("qwen2.5-7b", "Qwen2", False), ("mistral-7b", "Mistral", False),
    ("llama3.1-8b", "Llama", False)])
def test_preset_counts_equal_transformers_num_parameters_on_the_meta_device(name, cls, tied):
    mod, preset = REGISTRY[name]
    cfg = preset.config
    hc = hf.config_to_hf(mod, cfg)
    assert hc["tie_word_embeddings"] is tied
    with torch.device("meta"):
        config = getattr(transformers, f"{cls}Config")(**{k: v for k, v in hc.items()
                                                            if k not in ("model_type", "architectures")})
        model = getattr(transformers, f"{cls}ForCausalLM")(config)
    assert model.num_parameters() == count(mod.spec(cfg)) == preset.n_params
    if name == "mistral-7b":
        assert config.sliding_window == 4096
    if name == "llama3.1-8b":
        assert config.rope_parameters["rope_type"] == "llama3" and config.rope_parameters["factor"] == 8.0


def test_unsupported_rope_type_names_field_value_and_choices():
    hc = llama31_model().config.to_dict()
    hc["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    with pytest.raises(hf.UnsupportedModelError,
                       match=r"rope_parameters.rope_type='yarn' .* supported rope_type values: 'default', "
                             r"'linear', 'llama3'"):
        hf.config_from_hf(hc)
    hc = qwen2_model().config.to_dict()
    hc.pop("rope_parameters", None)
    hc["rope_scaling"] = {"type": "dynamic", "factor": 2.0}
    with pytest.raises(hf.UnsupportedModelError, match=r"rope_scaling.rope_type='dynamic'"):
        hf.config_from_hf(hc)


def test_qwen2_sliding_window_layers_import_and_export(tmp_path):
    cfg = transformers.Qwen2Config(**{**SMALL, "num_hidden_layers": 3}, use_sliding_window=True, sliding_window=4,
                                   max_window_layers=1)
    torch.manual_seed(0)
    m = _randomize(transformers.Qwen2ForCausalLM(cfg))
    m.save_pretrained(tmp_path / "hf")
    loaded = hf.load(tmp_path / "hf")
    assert loaded.config.sliding_window == 4 and loaded.config.local_layers == (False, True, True)
    x = np.random.default_rng(2).integers(0, V, (2, 12)).astype(np.int32)
    ref = _torch_logits(m, x)
    assert np.abs(np.asarray(qwen2.apply(loaded.params, jnp.asarray(x), loaded.config)) - ref).max() < TOL
    back = transformers.AutoModelForCausalLM.from_pretrained(hf.save(loaded, tmp_path / "out")).eval()
    assert back.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert np.abs(_torch_logits(back, x) - ref).max() < TOL
