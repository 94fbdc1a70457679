"""Every preset's exact parameter count (from the spec, nothing allocated), the registry, the Deviations
sections, and config errors that name the fix."""

from __future__ import annotations

import pytest

from jaxlm import count
from jaxlm.config import ConfigError
from jaxlm.models import FAMILIES, REGISTRY, bert, family_of, get, gpt2, llama, mistral, qwen2, transformer

PAPER = {  # counts fixed by the issue / the papers
    "gpt2-124m": 124_439_808,
    "bert-base": 109_482_240,
    "llama2-7b": 6_738_415_616,
    "transformer-base": 63_082_496,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-7b": 7_615_616_512,
    "mistral-7b": 7_241_732_096,
    "llama3.1-8b": 8_030_261_248,
}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_preset_count_is_exact(name):
    mod, preset = REGISTRY[name]
    assert preset.n_params is not None, f"{name} has no recorded count"
    assert count(mod.spec(preset.config)) == preset.n_params
    if name in PAPER:
        assert preset.n_params == PAPER[name]


def test_transformer_base_is_within_3_percent_of_the_papers_65m():
    n = count(transformer.spec(transformer.PRESETS["transformer-base"].config))
    assert abs(n - 65e6) / 65e6 < 0.03
    # and the docstring's accounting adds up: shared embedding + encoder + decoder
    spec = transformer.spec(transformer.PRESETS["transformer-base"].config)
    assert (count(spec["embed"]), count(spec["encoder"]), count(spec["decoder"])) == (
        18_944_000, 18_914_304, 25_224_192)
    assert "63,082,496" in transformer.__doc__


def test_registry_and_tiny_presets():
    for fam, mod in FAMILIES.items():
        tiny = [n for n in mod.PRESETS if n.endswith("-tiny")]
        assert len(tiny) >= 1, fam  # llama also has llama3.1-tiny (its RoPE scaling)
        for name in tiny:
            cfg = mod.PRESETS[name].config
            assert cfg.n_layers == 2 and cfg.d_model == 64, name
            assert family_of(cfg) is mod
    for name in ("transformer-base", "transformer-big", "gpt2-355m", "gpt2-774m", "gpt2-1.5b", "bert-large",
                 "tinyllama-1.1b"):
        assert name in REGISTRY
    mod, cfg = get("gpt2-124m")
    assert mod is gpt2 and cfg == gpt2.Config()
    assert get("llama2-7b")[1] == llama.Config()


@pytest.mark.parametrize("mod", [transformer, gpt2, bert, llama, qwen2, mistral], ids=lambda m: m.__name__.split(".")[-1])
def test_model_docstring_lists_deviations(mod):
    doc = mod.__doc__
    assert "\nDeviations:\n" in doc
    items = doc.split("\nDeviations:\n", 1)[1].strip()
    assert items.startswith("- "), f"{mod.__name__}: the Deviations section should be a bullet list"


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(KeyError, match=r"unknown preset 'gpt2-124' \(did you mean 'gpt2-124m'\?\)"):
        get("gpt2-124")  # (gpt3-125m is a preset of its own)
    with pytest.raises(KeyError, match=r"unknown preset 'lama-tiny' \(did you mean 'llama-tiny'\?\); known:"):
        get("lama-tiny")


def test_invalid_configs_name_the_fix():
    with pytest.raises(ConfigError, match=r"gpt2.Config: d_model=768 is not divisible by n_heads=10; pick n_heads "
                                          r"dividing d_model \(e.g. 8\) or set d_head"):
        gpt2.Config(n_heads=10)
    assert gpt2.Config(n_heads=10, d_head=64).head_dim == 64  # the other fix works
    with pytest.raises(ConfigError, match=r"n_heads=12 is not divisible by n_kv_heads=5; n_kv_heads must divide "
                                          r"n_heads \(e.g. 4\)"):
        llama.Config(d_model=768, n_heads=12, n_kv_heads=5)
    with pytest.raises(ConfigError, match=r"activation='swiglue' is not one of .* \(did you mean 'swiglu'\?\)"):
        llama.Config(activation="swiglue")
    with pytest.raises(ConfigError, match=r"norm='rms_norm' is not one of .* \(did you mean 'rmsnorm'\?\)"):
        llama.Config(norm="rms_norm")
    with pytest.raises(ConfigError, match=r"pos_emb='rotary' is not one of"):
        gpt2.Config(pos_emb="rotary")
    with pytest.raises(ConfigError, match=r"attn_impl='xlaa' is not one of .* \(did you mean 'xla'\?\)"):
        gpt2.Config(attn_impl="xlaa")
    with pytest.raises(ConfigError, match=r"remat='ful' is not one of .* \(did you mean 'full'\?\)"):
        gpt2.Config(remat="ful")
    with pytest.raises(ConfigError, match=r"gpt2.Config.n_layers=0 must be a positive integer"):
        gpt2.Config(n_layers=0)
    with pytest.raises(ConfigError, match=r"gpt2.Config.dropout=1.0 must be in \[0, 1\)"):
        gpt2.Config(dropout=1.0)
    with pytest.raises(ConfigError, match="RoPE needs an even head_dim, got 9"):
        llama.Config(d_model=36, n_heads=4)
    with pytest.raises(ConfigError, match=r"pad_id=600 must be in \[0, vocab_size=512\)"):
        gpt2.PRESETS["gpt2-tiny"].config.replace(pad_id=600)
    with pytest.raises(ConfigError, match=r"gpt2.Config.norm_eps=0.0 must be positive"):
        gpt2.Config(norm_eps=0.0)
    with pytest.raises(ConfigError, match=r"llama.Config.d_head=0 must be a positive integer"):
        llama.Config(d_head=0)
