"""The Hugging Face / GGUF converters are generic: a family defined here, with its own mapping (model_type,
config keys, tensor names, a fused tensor, a check), converts both ways without any code in jaxlm/convert."""

from __future__ import annotations

import ast
import types
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import jaxlm
from jaxlm import params as P
from jaxlm.convert import gguf, hf
from jaxlm.models import base, decoder, hfmap
from jaxlm.models.base import ModelConfig, Preset


@dataclass(frozen=True, kw_only=True)
class TinyConfig(ModelConfig):
    family: ClassVar[str] = "tinydec"
    vocab_size: int = 97
    max_len: int = 16
    d_model: int = 24
    n_heads: int = 4
    n_kv_heads: int | None = 2
    n_layers: int = 2
    d_ff: int = 40
    activation: str = "gelu_tanh"
    norm: str = "rmsnorm"
    pos_emb: str = "rope"
    tie_embeddings: bool = False
    dropout: float = 0.0
    attn_dropout: float = 0.0


_L = "backbone.blocks.{i}."


def _gguf_config(meta: hfmap.GGUFMetadata) -> dict:
    return {"model_type": "tinydec", "vocab": meta.get("vocab"), "context": meta.get("context"),
            "width": meta.get("width"), "heads": meta.get("heads"), "kv_heads": meta.get("kv_heads"),
            "depth": meta.get("depth"), "ffn": meta.get("ffn")}


TINY_HF = hfmap.HFMapping(
    model_types={"tinydec": "TinyDec"},
    architectures={"tinydec": "TinyDecForCausalLM"},
    fields=(
        hfmap.Field("vocab", "vocab_size"),
        hfmap.Field("context", "max_len"),
        hfmap.Field("width", "d_model"),
        hfmap.Field("heads", "n_heads"),
        hfmap.Field("kv_heads", "n_kv_heads", None, write=lambda c: c.kv_heads,
                    read=lambda g, hc: None if g in (None, hc["heads"]) else g),
        hfmap.Field("depth", "n_layers"),
        hfmap.Field("ffn", "d_ff"),
        hfmap.Field("act", "activation", "gelu_new", values=hfmap.ACTIVATIONS),
        hfmap.Field("eps", "norm_eps", 1e-5),
        hfmap.Field("theta", "rope_theta", 10000.0),
        hfmap.Field("dropout", "dropout", 0.0),
        hfmap.Field("attn_dropout", "attn_dropout", 0.0),
        hfmap.Field("tied", "tie_embeddings", False),
        hfmap.Field("bias", "use_bias", True),
    ),
    fixed={"norm_position": "pre", "norm": "rmsnorm", "pos_emb": "rope", "final_norm": True},
    constants={"rotary": True},
    checks=(hfmap.only("parallel_blocks", (False,), False, "TinyDec with parallel blocks ({key}={value})"),),
    prefix="backbone.",
    rules=(
        ("embed/tokens", "backbone.embed.weight", "copy"),
        ("layers/norm1/scale", _L + "ln_attn.weight", "copy"),
        ("layers/norm2/scale", _L + "ln_mlp.weight", "copy"),
        ("layers/attn/q/w", _L + "attn.q.weight", "linear1"), ("layers/attn/q/b", _L + "attn.q.bias", "vec"),
        ("layers/attn/k/w", _L + "attn.k.weight", "linear1"), ("layers/attn/k/b", _L + "attn.k.bias", "vec"),
        ("layers/attn/v/w", _L + "attn.v.weight", "linear1"), ("layers/attn/v/b", _L + "attn.v.bias", "vec"),
        ("layers/attn/o/w", _L + "attn.out.weight", "linear2"), ("layers/attn/o/b", _L + "attn.out.bias", "copy"),
        ("layers/mlp/wi/w", _L + "mlp.up.weight", "linear1"), ("layers/mlp/wi/b", _L + "mlp.up.bias", "copy"),
        ("layers/mlp/wo/w", _L + "mlp.down.weight", "linear1"), ("layers/mlp/wo/b", _L + "mlp.down.bias", "copy"),
        ("final_norm/scale", "backbone.ln_f.weight", "copy"),
        ("lm_head/w", "head.weight", "linear1"),
    ),
    # torch Linear [out, in]: k and v side by side along the output rows
    fused=(hfmap.Fused(".attn.kv.", (".attn.k.", ".attn.v."), axis=0),),
    renames={".norm_scale": ".weight"},
    ignored=("rotary.inv_freq",),
    gguf=hfmap.GGUFMapping(
        architectures=("tinydec",),
        tensors={"tok.weight": "backbone.embed.weight", "blk.{i}.q.weight": _L + "attn.q.weight"},
        config=_gguf_config,
    ),
)


def _family() -> types.ModuleType:
    mod = types.ModuleType("tinydec")
    mod.Config, mod.KIND, mod.TASKS, mod.HF = TinyConfig, "decoder", ("causal_lm",), TINY_HF
    mod.PRESETS = {"tinydec": Preset(TinyConfig(), "test family")}
    mod.spec, mod.init, mod.apply, mod.init_cache = decoder.spec, decoder.init, decoder.apply, decoder.init_cache
    return base.check_family(mod)


TINY = _family()
FAMS = {"tinydec": TINY}


def _random_params(cfg: TinyConfig) -> dict:
    """Every array random (biases and norm scales too), so that a misplaced tensor cannot pass."""
    rng = np.random.default_rng(0)
    return P.unflatten({k: rng.normal(size=p.shape).astype(np.float32) for k, p in P.flatten(TINY.spec(cfg)).items()})


def test_config_round_trip_through_its_own_keys():
    cfg = TinyConfig(rope_theta=500.0, norm_eps=1e-6)
    hc = hf.config_to_hf(TINY, cfg)
    assert hc["model_type"] == "tinydec" and hc["architectures"] == ["TinyDecForCausalLM"]
    assert (hc["width"], hc["heads"], hc["kv_heads"], hc["act"], hc["rotary"]) == (24, 4, 2, "gelu_new", True)
    family, back = hf.config_from_hf(hc, families=FAMS)
    assert family is TINY and back == cfg
    # the mapping's defaults fill absent keys; kv_heads == heads reads as plain multi-head attention
    minimal = {"model_type": "tinydec", "vocab": 50, "context": 8, "width": 16, "heads": 2, "kv_heads": 2, "depth": 1,
               "ffn": 32}
    _, c = hf.config_from_hf(minimal, families=FAMS)
    assert c.n_kv_heads is None and c.activation == "gelu_tanh" and c.use_bias and not c.tie_embeddings


def test_params_round_trip_with_fused_tensor_and_bare_names():
    cfg = TinyConfig()
    params = _random_params(cfg)
    tensors = hf.params_to_hf(TINY, cfg, params)
    kv = tensors["backbone.blocks.1.attn.kv.weight"]
    assert kv.shape == (2 * cfg.kv_heads * cfg.head_dim, cfg.d_model)  # torch layout, k rows then v rows
    assert not any(".attn.k." in k or ".attn.v." in k for k in tensors)
    assert tensors["head.weight"].shape == (cfg.vocab_size, cfg.d_model)
    back = hf.params_from_hf(TINY, cfg, tensors)
    flat, flat_back = P.flatten(params), P.flatten(back)
    assert flat.keys() == flat_back.keys()
    for k in flat:
        np.testing.assert_array_equal(np.asarray(flat[k]), flat_back[k], err_msg=k)
    # a bare backbone's names (no "backbone." prefix), an old norm name and a buffer load the same
    bare = {k.removeprefix("backbone."): v for k, v in tensors.items()}
    bare["ln_f.norm_scale"] = bare.pop("ln_f.weight")
    bare["blocks.0.rotary.inv_freq"] = np.zeros(3, np.float32)
    again = P.flatten(hf.params_from_hf(TINY, cfg, bare))
    assert again.keys() == flat.keys() and all(np.array_equal(again[k], flat_back[k]) for k in flat)


def test_checks_and_messages_come_from_the_mapping():
    hc = hf.config_to_hf(TINY, TinyConfig())
    with pytest.raises(hfmap.UnsupportedModelError, match=r"TinyDec with parallel blocks \(parallel_blocks=True\)"
                                                          r".*supported model_type values: 'tinydec' \(TinyDec\)"):
        hf.config_from_hf({**hc, "parallel_blocks": True}, families=FAMS)
    with pytest.raises(hfmap.UnsupportedModelError, match="act='quick_gelu' is not supported"):
        hf.config_from_hf({**hc, "act": "quick_gelu"}, families=FAMS)
    with pytest.raises(ValueError, match="no 'width'"):
        hf.config_from_hf({k: v for k, v in hc.items() if k != "width"}, families=FAMS)
    with pytest.raises(hfmap.UnsupportedModelError, match=r"model_type 'tinydec'.*'gpt2'"):
        hf.config_from_hf(hc)  # not in the library's registry
    with pytest.raises(hfmap.UnsupportedModelError, match=r"norm='layernorm' \(Hugging Face 'tinydec' models "
                                                          r"have 'rmsnorm'\).*"
                                                          r"activation='swiglu' has no Hugging Face act"):
        hf.config_to_hf(TINY, TinyConfig(norm="layernorm", activation="swiglu"))
    with pytest.raises(hfmap.UnsupportedModelError, match=r"no Hugging Face name.*embed/positions"):
        hf.params_to_hf(TINY, TinyConfig(pos_emb="learned"), _random_params(TinyConfig(pos_emb="learned")))


def test_mapping_is_validated():
    with pytest.raises(TypeError, match="op 'copy'"):
        hfmap.HFMapping(model_types={"x": "X"}, architectures={"x": "XModel"}, fields=(), prefix="x.",
                        rules=(("embed/tokens", "x.embed.weight", "transpose"),))
    with pytest.raises(TypeError, match="no class for model_type"):
        hfmap.HFMapping(model_types={"x": "X"}, architectures={}, fields=(), prefix="x.", rules=())


def test_gguf_architecture_is_found_in_the_mapping(tmp_path):
    gguf_pkg = pytest.importorskip("gguf")
    cfg = TinyConfig(n_layers=1)
    cfg_hf = {"vocab": 97, "context": 16, "width": 24, "heads": 4, "kv_heads": 2, "depth": 1, "ffn": 40}
    f = tmp_path / "tiny.gguf"
    w = gguf_pkg.GGUFWriter(str(f), "tinydec")
    for k, v in cfg_hf.items():
        w.add_uint32(f"tinydec.{k}", v)
    w.add_tensor("tok.weight", np.ones((97, 24), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    reader = gguf_pkg.GGUFReader(str(f))
    hc = gguf.hf_config(reader, FAMS)
    assert hf.config_from_hf(hc, families=FAMS)[1] == cfg
    assert gguf.architectures(FAMS) == {"tinydec": TINY}
    # the mapping names only two tensors, so the checkpoint is incomplete: the engine says which are missing
    with pytest.raises(ValueError, match=r"missing tensors \['backbone.blocks.0.ln_attn.weight'"):
        gguf.load(f, families=FAMS)
    with pytest.raises(hfmap.UnsupportedModelError, match=r"GGUF architecture 'tinydec'.*\['llama', 'mistral'\]"):
        gguf.load(f)


FAMILY_NAMES = {"gpt2", "llama", "bert", "transformer", "mistral"}


def test_convert_package_names_no_family():
    """jaxlm/convert holds no family-name strings and imports no family module: families are data to it."""
    root = Path(jaxlm.__file__).parent / "convert"
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        names = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in FAMILY_NAMES]
        assert not names, f"{path.name} names families {names}"
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "jaxlm.models"
                    for a in n.names]
        assert not set(imported) & FAMILY_NAMES, f"{path.name} imports {imported}"
