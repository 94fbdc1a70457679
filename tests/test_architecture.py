"""The layout rules of docs/architecture.md, checked on the source: imports only point down the layers, no
import cycles, no family names outside the family files, and the family contract fails loudly."""

from __future__ import annotations

import ast
import dataclasses
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlm
from jaxlm.config import ConfigError

ROOT = Path(jaxlm.__file__).parent

# lowest first; a module may import from lower layers and from its own package, nothing else
LAYERS: list[set[str]] = [
    {"jaxlm.config", "jaxlm.fileio", "jaxlm.platforms"},
    {"jaxlm.params"},
    {"jaxlm.sharding"},
    {"jaxlm.nn", "jaxlm.losses", "jaxlm.metrics", "jaxlm.data"},
    {"jaxlm.models"},
    {"jaxlm.finetune"},
    {"jaxlm.parallel", "jaxlm.distributed"},
    {"jaxlm.train", "jaxlm.generate", "jaxlm.convert"},
    {"jaxlm.plan"},
    {"jaxlm.pretrained"},
    {"jaxlm.evaluation", "jaxlm.interop"},
    {"jaxlm.commands", "jaxlm.cli", "jaxlm"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The layer unit a module belongs to: its package under jaxlm (jaxlm.nn.attention -> jaxlm.nn)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _layer(module: str) -> int:
    unit = _unit(module)
    for i, group in enumerate(LAYERS):
        if unit in group:
            return i
    raise AssertionError(f"{module} is in no layer of LAYERS: add its package to docs/architecture.md and here")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported jaxlm module, line) for every import in the file, module-level or inside functions."""
    tree = ast.parse(path.read_text())
    here = _module_name(path)
    pkg = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("jaxlm")]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            if not mod.startswith("jaxlm"):
                continue
            for a in node.names:  # "from jaxlm.nn import attention" imports the submodule jaxlm.nn.attention
                sub = f"{mod}.{a.name}"
                out.append((sub if _is_module(sub) else mod, node.lineno))
    return out


def _is_module(name: str) -> bool:
    p = ROOT.parent.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_imports_only_point_down():
    bad = []
    for path in _sources():
        here = _module_name(path)
        for mod, line in _imports(path):
            if _unit(mod) == _unit(here) and here != "jaxlm":
                continue  # within its own package
            if here == "jaxlm" or _layer(mod) < _layer(here):
                continue
            bad.append(f"{path.relative_to(ROOT.parent)}:{line} ({here}, layer {_layer(here)}) imports {mod} "
                       f"(layer {_layer(mod)})")
    assert not bad, "imports that do not point down the layers:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for path in _sources():
        here = _module_name(path)
        graph[here] = {m for m, _ in _imports(path) if m != here and not here.startswith(m + ".")}
    # Tarjan-free cycle search: depth-first with colours
    colour: dict[str, int] = {}
    cycles = []

    def visit(n: str, stack: list[str]) -> None:
        colour[n] = 1
        for m in sorted(graph.get(n, ())):
            if colour.get(m) == 1:
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m in graph and not colour.get(m):
                visit(m, stack + [m])
        colour[n] = 2

    for n in sorted(graph):
        if not colour.get(n):
            visit(n, [n])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


# strings that equal a family name but name something else: llama.cpp's GGUF ``tokenizer.ggml.pre`` value
# "qwen2" picks a pre-tokenizer split regex (used by Qwen2 and other vocabularies), not the qwen2 family
NOT_FAMILY_NAMES = {("jaxlm/convert/tokenizer.py", "qwen2")}


def test_no_family_names_outside_the_family_files():
    """train/, generate/, convert/, plan/ and commands/ know families only through the registry and the
    family contract: no string literal names a family (or a Hugging Face model_type a family maps)."""
    from jaxlm.models import FAMILIES

    names = set(FAMILIES)
    for mod in FAMILIES.values():
        hf = getattr(mod, "HF", None)
        names |= set(getattr(hf, "model_types", ()) or ())
    found = []
    for sub in ("train", "generate", "convert", "plan", "commands", "finetune"):
        for path in sorted((ROOT / sub).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                    where = str(path.relative_to(ROOT.parent))
                    if (where, node.value) in NOT_FAMILY_NAMES:
                        continue
                    found.append(f"{where}:{node.lineno}: {node.value!r}")
    assert not found, "family names outside jaxlm/models:\n" + "\n".join(found)


# ------------------------------------------------------------------------------------------------------------
# the family contract
def _fake_family(**drop_or_set) -> types.ModuleType:
    from jaxlm.models import gpt2

    mod = types.ModuleType("my_family")
    for k in ("Config", "PRESETS", "KIND", "TASKS", "HF", "spec", "init", "apply", "init_cache"):
        setattr(mod, k, getattr(gpt2, k))
    for k, v in drop_or_set.items():
        if v is None:
            delattr(mod, k)
        else:
            setattr(mod, k, v)
    return mod


def test_a_family_missing_a_declaration_fails_naming_it():
    from jaxlm.models.base import FamilyError, check_family

    assert check_family(_fake_family()) is not None
    with pytest.raises(FamilyError, match=r"family module my_family is missing: TASKS \(tuple of the training"):
        check_family(_fake_family(TASKS=None))
    with pytest.raises(FamilyError, match=r"missing: HF .*; apply"):
        check_family(_fake_family(HF=None, apply=None))
    with pytest.raises(FamilyError, match=r"init_cache .* is missing"):
        check_family(_fake_family(init_cache=None))
    with pytest.raises(FamilyError, match=r"KIND='decoder-only' is not one of"):
        check_family(_fake_family(KIND="decoder-only"))
    with pytest.raises(FamilyError, match=r"TASKS must be a tuple drawn from .* \(got \('causal-lm',\)\)"):
        check_family(_fake_family(TASKS=("causal-lm",)))


def test_a_field_the_family_does_not_use_is_an_error_naming_the_fields_it_uses():
    from jaxlm.models import bert
    from jaxlm.train import config as C

    with pytest.raises(ConfigError, match=r"bert.Config does not use rope_theta \(set to 5000.0\); the bert "
                                          r"family's fields are: vocab_size, max_len, .*type_vocab_size"):
        bert.Config(rope_theta=5000.0)
    run = C.RunConfig(model="bert-tiny", train=C.TrainConfig(task="mlm"))
    with pytest.raises(ConfigError, match=r"does not use tie_embeddings .* fields are: .*num_labels"):
        C.apply_overrides(run, ["model.tie_embeddings=false"])
    assert C.apply_overrides(run, ["model.n_layers=3"]).model.n_layers == 3


def test_family_configs_state_only_what_differs_from_the_base():
    from jaxlm.models import FAMILIES
    from jaxlm.models.base import ModelConfig

    base = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    for name, mod in FAMILIES.items():
        own = mod.Config.__dict__.get("__annotations__", {})
        restated = [f for f in own if f in base and base[f] is not dataclasses.MISSING
                    and getattr(mod.Config, f, None) == base[f]]
        assert not restated, f"{name}.Config restates base defaults: {restated}"


# ------------------------------------------------------------------------------------------------------------
# nn blocks without a model Config
def test_blocks_run_on_their_own_narrow_configs():
    """Attention, FFN, norms and a whole block built from their own small configs equal the same blocks
    driven by a model Config."""
    from jaxlm.models import llama
    from jaxlm.nn import attention, blocks, ffn, norms
    from jaxlm.params import init

    cfg = llama.Config(vocab_size=16, max_len=16, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=48)
    a = attention.AttentionConfig(d_model=32, n_heads=4, n_kv_heads=2, use_bias=False, pos_emb="rope")
    f = ffn.FFNConfig(d_model=32, d_ff=48, activation="swiglu", use_bias=False)
    n = norms.NormConfig(kind="rmsnorm", dim=32)
    b = blocks.BlockConfig(attn=a, ffn=f, norm=n, norm_position="pre")
    assert (a, f, n, b) == (cfg.attn_cfg, cfg.ffn_cfg, cfg.norm_cfg, cfg.block_cfg)
    p = init(jax.random.key(0), blocks.spec(b))
    assert jax.tree.structure(p) == jax.tree.structure(init(jax.random.key(0), blocks.spec(cfg)))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 32)), jnp.float32)
    np.testing.assert_array_equal(blocks.apply(p, x, b)[0], blocks.apply(p, x, cfg)[0])
    np.testing.assert_array_equal(attention.apply(p["attn"], x, a)[0], attention.apply(p["attn"], x, cfg)[0])
    np.testing.assert_array_equal(ffn.apply(p["mlp"], x, f), ffn.apply(p["mlp"], x, cfg))
    np.testing.assert_array_equal(norms.apply(p["norm1"], x, n), norms.apply(p["norm1"], x, cfg))


# ------------------------------------------------------------------------------------------------------------
# the test tree itself
def test_test_module_basenames_are_unique():
    """pytest's default (prepend) import mode imports every test module by its basename: two files with the
    same name in different folders make the whole run fail at collection, but only when both are collected
    together (a targeted run never notices)."""
    import collections
    import pathlib

    tests = pathlib.Path(__file__).parent
    names = collections.Counter(p.name for p in tests.rglob("test_*.py"))
    dup = {n: sorted(str(p.relative_to(tests)) for p in tests.rglob(n)) for n, c in names.items() if c > 1}
    assert not dup, f"rename one of each pair (pytest imports test modules by basename): {dup}"
