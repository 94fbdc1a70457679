"""Issue 33 (first part): Qwen3 (QK-norm per head, head_dim independent of d_model / n_heads), OLMo 2 (norms
after the sub-layers, QK-norm over the whole projection) and OLMo 3 (OLMo 2 + 3 sliding : 1 full layers)
against transformers: logits both directions on random-init tiny models built from configs (no network),
greedy tokens of jaxlm.generate vs transformers' generate (past OLMo 3's window), every preset's count vs
transformers' num_parameters() on the meta device, the CLI (convert, generate), and checkpoints using what
jaxlm does not implement refused by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm import cli, count, generate, pretrained  # noqa: E402
from jaxlm.convert import hf  # noqa: E402
from jaxlm.models import REGISTRY, olmo2, qwen3  # noqa: E402
from tests.convert._hf_checks import randomize as _randomize  # noqa: E402
from tests.convert._hf_checks import torch_logits as _torch_logits  # noqa: E402

pytestmark = pytest.mark.hf
TOL = 1e-4
V = 300
SMALL = dict(vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=6,
             num_key_value_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=None,
             pad_token_id=None)



def qwen3_model(tied=True, **kw):
    # head_dim 16 with 6 heads: 96 != hidden 48
    cfg = transformers.Qwen3Config(**{**SMALL, **kw}, head_dim=16, rope_theta=10000.0, tie_word_embeddings=tied)
    torch.manual_seed(0)
    return _randomize(transformers.Qwen3ForCausalLM(cfg))


def olmo2_model():
    cfg = transformers.Olmo2Config(**SMALL, rms_norm_eps=1e-6, rope_parameters={"rope_type": "default",
                                                                                "rope_theta": 50000.0})
    torch.manual_seed(0)
    return _randomize(transformers.Olmo2ForCausalLM(cfg))


def olmo3_model(**kw):
    # Olmo3Config's own layer_types: sliding, sliding, sliding, full; a window of 4 < the 13 test tokens
    cfg = transformers.Olmo3Config(**SMALL, sliding_window=4, rms_norm_eps=1e-6, **kw)
    torch.manual_seed(0)
    return _randomize(transformers.Olmo3ForCausalLM(cfg))


CASES = {"qwen3": (qwen3_model, qwen3), "qwen3-untied": (lambda: qwen3_model(tied=False), qwen3),
         "olmo2": (olmo2_model, olmo2), "olmo3": (olmo3_model, olmo2)}


@pytest.mark.parametrize("case", list(CASES))
def test_import_export_logits_and_greedy_generation(tmp_path, case):
    build, family = CASES[case]
    m = build()
    m.save_pretrained(tmp_path / "hf")
    loaded = pretrained.load(tmp_path / "hf")
    c = loaded.config
    assert loaded.family is family
    if case.startswith("qwen3"):
        tied = case == "qwen3"
        assert (c.head_dim, c.qk_norm, c.tie_embeddings, c.sliding_window) == (16, "head", tied, None)
        assert ("lm_head" in loaded.params) is not tied
        assert loaded.params["layers"]["attn"]["q_norm"]["scale"].shape == (4, 16)
    else:
        assert (c.qk_norm, c.post_norms, c.pre_norms, c.tie_embeddings) == ("full", True, False, False)
        assert loaded.params["layers"]["attn"]["q_norm"]["scale"].shape == (4, 6, 8)  # [L, H, K] of [H * K]
        assert "norm1" not in loaded.params["layers"]
    if case == "olmo2":
        assert c.rope_theta == 50000.0 and not any(c.local_layers)
    if case == "olmo3":
        assert c.sliding_window == 4 and c.local_layers == (True, True, True, False) and c.rope_theta == 500000.0
    x = np.random.default_rng(1).integers(0, V, (2, 13)).astype(np.int32)
    ref = _torch_logits(m, x)
    got = np.asarray(family.apply(loaded.params, jnp.asarray(x), c))
    err = np.abs(got - ref).max()
    assert err < TOL, err
    if case == "olmo3":  # the window matters at this length: without it the logits move far beyond the tolerance
        assert np.abs(np.asarray(family.apply(loaded.params, jnp.asarray(x), c.replace(sliding_window=None)))
                      - ref).max() > 100 * TOL
    back = transformers.AutoModelForCausalLM.from_pretrained(hf.save(loaded, tmp_path / "out")).eval()
    assert type(back).__name__ == type(m).__name__
    if case == "olmo3":
        assert back.config.layer_types == m.config.layer_types and back.config.sliding_window == 4
        assert back.config.rope_parameters == m.config.rope_parameters
    back_err = np.abs(_torch_logits(back, x) - ref).max()
    print(f"{case}: max |dlogit| import {err:.3g}, after export {back_err:.3g}")  # pytest -s: the report's numbers
    assert back_err < TOL
    # greedy: 12 new tokens after a 5-token prompt (17 > 4: OLMo 3 decodes far past its window)
    prompt = [int(t) for t in x[0, :5]]
    with torch.no_grad():
        want = m.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, 5:].tolist()
    out = generate.generate(loaded.params, c, [prompt], max_new_tokens=12, greedy=True)
    assert out.tokens[0] == want


def test_olmo3_preset_exports_as_olmo3_and_olmo2_without_windows(tmp_path):
    """A model born in jaxlm (no original config.json): the model_type follows its layers."""
    for name, cls in (("olmo3-tiny", "Olmo3ForCausalLM"), ("olmo2-tiny", "Olmo2ForCausalLM")):
        cfg = olmo2.PRESETS[name].config
        params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(7), a.shape),
                              olmo2.init(jax.random.key(0), cfg))  # scales away from one
        back = transformers.AutoModelForCausalLM.from_pretrained(hf.save((olmo2, cfg, params), tmp_path / name))
        assert type(back).__name__ == cls
        if name == "olmo3-tiny":
            assert back.config.layer_types == ["sliding_attention", "full_attention"]
        else:
            assert not hasattr(back.config, "layer_types") and not hasattr(back.config, "sliding_window")
        x = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 11))
        got = np.asarray(olmo2.apply(params, jnp.asarray(x), cfg))
        assert np.abs(_torch_logits(back.eval(), x) - got).max() < TOL


def test_qwen3_sliding_window_layers_import_and_export(tmp_path):
    m = qwen3_model(num_hidden_layers=3, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    m.save_pretrained(tmp_path / "hf")
    loaded = hf.load(tmp_path / "hf")
    assert loaded.config.sliding_window == 4 and loaded.config.local_layers == (False, True, True)
    x = np.random.default_rng(2).integers(0, V, (2, 12)).astype(np.int32)
    ref = _torch_logits(m, x)
    assert np.abs(np.asarray(qwen3.apply(loaded.params, jnp.asarray(x), loaded.config)) - ref).max() < TOL
    back = transformers.AutoModelForCausalLM.from_pretrained(hf.save(loaded, tmp_path / "out")).eval()
    assert back.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert np.abs(_torch_logits(back, x) - ref).max() < TOL


def test_cli_convert_and_generate(tmp_path, capsys):
    m = olmo3_model()
    m.save_pretrained(tmp_path / "hf")
    prompt = [5, 17, 42, 7, 99]
    with torch.no_grad():
        want = m.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, 5:].tolist()
    gen = ["--prompt-ids", ",".join(map(str, prompt)), "--greedy", "--max-new-tokens", "8"]
    assert cli.main(["generate", str(tmp_path / "hf"), *gen]) == 0
    assert capsys.readouterr().out.split() == [str(t) for t in want]
    assert cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--to", str(tmp_path / "jx")]) == 0
    assert "olmo2" in capsys.readouterr().out
    assert cli.main(["convert", "--to-hf", str(tmp_path / "jx"), "--out", str(tmp_path / "hf2")]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf2").eval()
    x = np.random.default_rng(4).integers(0, V, (1, 10))
    assert type(back).__name__ == "Olmo3ForCausalLM"
    assert np.abs(_torch_logits(back, x) - _torch_logits(m, x)).max() < TOL


def test_models_command_lists_the_new_presets_with_counts(capsys):
    assert cli.main(["models"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    for name in ("qwen3-0.6b", "qwen3-8b", "qwen3-tiny", "olmo2-7b", "olmo2-tiny", "olmo3-7b"):
        assert str(REGISTRY[name][1].n_params) in rows[name], rows.get(name)


PRESETS = [n for n, (mod, _) in REGISTRY.items() if mod in (qwen3, olmo2)]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_counts_equal_transformers_num_parameters_on_the_meta_device(name):
    mod, preset = REGISTRY[name]
    cfg = preset.config
    hc = hf.config_to_hf(mod, cfg)
    cls = {"qwen3": "Qwen3", "olmo2": "Olmo2", "olmo3": "Olmo3"}[hc["model_type"]]
    assert hc["model_type"] == ("olmo3" if name.startswith("olmo3") else name.split("-")[0])
    with torch.device("meta"):
        config = getattr(transformers, f"{cls}Config")(**{k: v for k, v in hc.items()
                                                            if k not in ("model_type", "architectures")})
        model = getattr(transformers, f"{cls}ForCausalLM")(config)
    assert model.num_parameters() == count(mod.spec(cfg)) == preset.n_params
    assert config.tie_word_embeddings is cfg.tie_embeddings
    if name in ("olmo3-7b", "olmo3-32b"):
        assert config.sliding_window == 4096
        assert config.layer_types[:4] == ["sliding_attention"] * 3 + ["full_attention"]
    if name == "qwen3-0.6b":
        assert (config.head_dim, config.hidden_size, config.num_attention_heads) == (128, 1024, 16)


# ------------------------------------------------------------------------------------------------------------
# refused, never loaded approximately
def _hc(build, **kw) -> dict:
    return build(**kw).config.to_dict()


def test_unsupported_rope_types_are_refused_by_name():
    hc = _hc(qwen3_model)
    hc["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    with pytest.raises(hf.UnsupportedModelError, match=r"rope_parameters.rope_type='yarn' .* supported rope_type "
                                                       r"values: 'default', 'linear', 'llama3'"):
        hf.config_from_hf(hc)
    # OLMo 3's released long-context config: YaRN on the full-attention layers (an older transformers' keys)
    hc = _hc(olmo3_model)
    hc.pop("rope_parameters")
    hc.update(rope_theta=500000, rope_scaling={"rope_type": "yarn", "factor": 8.0, "beta_fast": 32.0,
                                               "beta_slow": 1.0, "original_max_position_embeddings": 8192})
    with pytest.raises(hf.UnsupportedModelError, match=r"rope_scaling.rope_type='yarn' \(RoPE scaling of this "
                                                       r"olmo3 checkpoint's full_attention layers\)"):
        hf.config_from_hf(hc)


def test_olmo3_with_different_rope_on_sliding_and_full_layers_is_refused():
    hc = _hc(olmo3_model)
    hc["rope_parameters"] = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 500000.0}}
    with pytest.raises(hf.UnsupportedModelError, match=r"olmo3 with different RoPE on its sliding and full "
                                                       r"layers .* jaxlm applies one RoPE to every layer"):
        hf.config_from_hf(hc)
    # linear scaling on the full layers only: also two RoPEs
    hc = _hc(olmo3_model)
    hc["rope_parameters"]["full_attention"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}
    with pytest.raises(hf.UnsupportedModelError, match="different RoPE on its sliding and full layers"):
        hf.config_from_hf(hc)
    # and export refuses a jaxlm Config that would need it
    cfg = olmo2.PRESETS["olmo3-tiny"].config.replace(rope_type="linear", rope_factor=2.0)
    with pytest.raises(hf.UnsupportedModelError, match=r"rope_type='linear' with sliding-window layers"):
        hf.config_to_hf(olmo2, cfg)


@pytest.mark.parametrize("build", [qwen3_model, olmo3_model], ids=["qwen3", "olmo3"])
def test_unknown_layer_types_are_refused_by_name(build):
    hc = _hc(build)
    hc["layer_types"] = ["sliding_attention", "chunked_attention", "full_attention", "full_attention"]
    with pytest.raises(hf.UnsupportedModelError, match=r"layer_types with 'chunked_attention' .* supported "
                                                       r"layer_types values: 'sliding_attention', 'full_attention'"):
        hf.config_from_hf(hc)


@pytest.mark.parametrize("build", [qwen3_model, olmo2_model], ids=["qwen3", "olmo2"])
def test_attention_bias_is_refused(build):
    hc = {**_hc(build), "attention_bias": True}
    with pytest.raises(hf.UnsupportedModelError, match=r"attention_bias=True \(biases on q/k/v/o but not on the "
                                                       r"MLP\)"):
        hf.config_from_hf(hc)


def test_absent_keys_read_as_transformers_defaults():
    """config.json keys a checkpoint may omit: our reading equals what transformers' config class fills in."""
    base = {k: v for k, v in SMALL.items() if not k.endswith("token_id")}
    hc = {**base, "model_type": "qwen3", "num_hidden_layers": 2}  # no head_dim: Qwen3Config's 128
    _, cfg = hf.config_from_hf(hc)
    assert cfg.head_dim == transformers.Qwen3Config(**base).head_dim == 128
    # OLMo 3 without layer_types / sliding_window, with an older transformers' top-level rope_theta
    hc = {**base, "model_type": "olmo3", "num_hidden_layers": 8, "max_position_embeddings": 8192,
          "rope_theta": 500000}
    _, cfg = hf.config_from_hf(hc)
    ref = transformers.Olmo3Config(**{k: v for k, v in hc.items() if k != "model_type"})
    assert [("sliding_attention" if x else "full_attention") for x in cfg.local_layers] == ref.layer_types
    assert cfg.sliding_window == ref.sliding_window == 4096
    assert cfg.rope_theta == ref.rope_parameters["sliding_attention"]["rope_theta"] == 500000.0
