"""jaxlm.config: typed key=value overrides, JSON round-trips, and errors that name the fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from jaxlm import config as C
from jaxlm.models import bert, get, gpt2, llama, transformer


def test_override_parses_types_from_annotations():
    _, cfg = get("gpt2-tiny")
    new = C.override(cfg, ["d_model=128", "dropout=0.25", "tie_embeddings=false", "n_kv_heads=2",
                           "activation=relu", "scan_layers=0"])
    assert (new.d_model, new.dropout, new.tie_embeddings, new.n_kv_heads, new.activation, new.scan_layers) == (
        128, 0.25, False, 2, "relu", False)
    assert isinstance(new.d_model, int) and isinstance(new.dropout, float)
    assert C.override(new, {"n_kv_heads": "none"}).n_kv_heads is None
    assert cfg.d_model == 64  # the original is untouched (frozen dataclass)
    b = C.override(bert.PRESETS["bert-tiny"].config, ["heads=(mlm,classifier)", "num_labels=3"])
    assert b.heads == ("mlm", "classifier") and b.num_labels == 3


def test_override_unknown_key_suggests_the_closest():
    _, cfg = get("gpt2-tiny")
    with pytest.raises(C.ConfigError, match=r"unknown config key 'n_haeds' \(did you mean 'n_heads'\?\)"):
        C.override(cfg, ["n_haeds=8"])
    with pytest.raises(C.ConfigError, match="not of the form key=value"):
        C.override(cfg, ["d_model"])
    with pytest.raises(C.ConfigError, match="d_model='abc': expected an integer"):
        C.override(cfg, ["d_model=abc"])
    with pytest.raises(C.ConfigError, match="expected a boolean"):
        C.override(cfg, ["tie_embeddings=maybe"])
    with pytest.raises(C.ConfigError, match="'d_model' is not a section"):
        C.override(cfg, ["d_model.x=1"])


def test_override_runs_the_config_validation():
    _, cfg = get("gpt2-tiny")
    with pytest.raises(C.ConfigError, match="n_heads=4 is not divisible by n_kv_heads=3"):
        C.override(cfg, ["n_kv_heads=3"])


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "bert-tiny", "transformer-tiny", "gpt2-124m"])
def test_json_round_trip(tmp_path, name):
    _, cfg = get(name)
    cfg = cfg.replace(dropout=0.05)
    path = tmp_path / "config.json"
    C.save_json(cfg, path)
    back = C.load_json(path)
    assert back == cfg and type(back) is type(cfg)
    assert C.to_dict(cfg)["__class__"].endswith(".Config")


def test_from_dict_rejects_unknown_fields_and_missing_files(tmp_path):
    d = C.to_dict(get("llama-tiny")[1])
    d["n_layer"] = 3
    with pytest.raises(C.ConfigError, match=r"no field 'n_layer' \(did you mean 'n_layers'\?\)"):
        C.from_dict(d)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        C.load_json(tmp_path / "nope.json")


def test_closest():
    assert C.closest("gelu_tahn", ["gelu", "gelu_tanh", "relu"]) == " (did you mean 'gelu_tanh'?)"
    assert C.closest("zzzzzz", ["gelu", "relu"]) == ""


def test_configs_are_frozen_and_hashable():
    for mod in (gpt2, llama, bert, transformer):
        cfg = mod.Config() if mod is not bert else mod.Config(heads=("mlm",))
        hash(cfg)
        with pytest.raises(AttributeError):
            cfg.d_model = 1


@dataclass(frozen=True, kw_only=True)
class _Optim:
    lr: float = 1e-3
    schedule: Literal["cosine", "noam"] = "cosine"
    betas: tuple[float, ...] = (0.9, 0.999)


@dataclass(frozen=True, kw_only=True)
class _Run:
    steps: int = 10
    eval_every: int | None = None
    optim: _Optim = field(default_factory=_Optim)


def test_nested_sections_literals_tuples_and_optionals():
    cfg = C.override(_Run(), ["steps=1e3", "eval_every=5", "optim.lr=3e-4", "optim.schedule=noam",
                              "optim.betas=(0.8, 0.95)"])
    assert cfg == _Run(steps=1000, eval_every=5, optim=_Optim(lr=3e-4, schedule="noam", betas=(0.8, 0.95)))
    assert C.override(cfg, ["eval_every=null"]).eval_every is None
    with pytest.raises(C.ConfigError, match=r"unknown config key 'optim.lrr' \(did you mean 'lr'\?\)"):
        C.override(_Run(), ["optim.lrr=3"])
    with pytest.raises(C.ConfigError, match=r"optim.schedule='cosin' is not one of \['cosine', 'noam'\] \(did you"):
        C.override(_Run(), ["optim.schedule=cosin"])
    with pytest.raises(C.ConfigError, match=r"steps='1.5': expected an integer"):
        C.override(_Run(), ["steps=1.5"])
    with pytest.raises(C.ConfigError, match="optim is a section; set one of its fields"):
        C.override(_Run(), ["optim=3"])
    assert C.from_dict(C.to_dict(cfg)) == cfg
