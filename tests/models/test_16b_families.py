"""Issue 16's families (gemma, gemma2, phi3, gpt3): the counts the issue and the papers fix, GPT-3's Table 2.1
row by row against the closed-form count, and each family's Deviations section."""

from __future__ import annotations

import pytest

from jaxlm import count
from jaxlm.models import REGISTRY, gemma, gemma2, gpt3, phi3

ISSUE = {"gemma-2b": 2_506_172_416, "gemma2-2b": 2_614_341_888, "phi3-mini": 3_821_079_552}


@pytest.mark.parametrize("name", sorted(ISSUE))
def test_issue_counts_are_exact(name):
    mod, preset = REGISTRY[name]
    assert count(mod.spec(preset.config)) == preset.n_params == ISSUE[name]


def _gpt3_formula(L: int, D: int, H: int, K: int, V: int = 50257, T: int = 2048) -> int:
    """The docstring's count: per layer 4 D A + 3 A + D (attention, A = H K) + 8 D^2 + 5 D (FFN) + 4 D (two
    LayerNorms); plus the tied V x D table, the T x D positions and the final LayerNorm."""
    A = H * K
    return L * (4 * D * A + 3 * A + D + 8 * D * D + 5 * D + 4 * D) + V * D + T * D + 2 * D


# Brown et al. 2020, Table 2.1: name, n_params (nominal), n_layers, d_model, n_heads, d_head
TABLE = [("gpt3-125m", 125e6, 12, 768, 12, 64), ("gpt3-350m", 350e6, 24, 1024, 16, 64),
         ("gpt3-760m", 760e6, 24, 1536, 16, 96), ("gpt3-1.3b", 1.3e9, 24, 2048, 24, 128),
         ("gpt3-2.7b", 2.7e9, 32, 2560, 32, 80), ("gpt3-6.7b", 6.7e9, 32, 4096, 32, 128),
         ("gpt3-13b", 13e9, 40, 5140, 40, 128), ("gpt3-175b", 175e9, 96, 12288, 96, 128)]


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r[0])
def test_gpt3_presets_are_table_2_1(row):
    name, nominal, L, D, H, K = row
    c = gpt3.PRESETS[name].config
    assert (c.n_layers, c.d_model, c.n_heads, c.head_dim, c.d_ff, c.max_len, c.vocab_size) == (
        L, D, H, K, 4 * D, 2048, 50257)
    n = count(gpt3.spec(c))
    assert n == gpt3.PRESETS[name].n_params == _gpt3_formula(L, D, H, K)
    # attention width H * K, not d_model: the XL and 13B rows' projections are D x A
    assert gpt3.spec(c)["layers"]["attn"]["q"]["w"].shape == (L, D, H, K)
    assert gpt3.spec(c)["layers"]["attn"]["o"]["w"].shape == (L, H, K, D)
    # every row is within 3% of the paper's nominal size except XL, whose 24 x 128 heads give 1.52B
    assert abs(n / nominal - 1) < (0.17 if name == "gpt3-1.3b" else 0.03), n
    assert f"{n:,}" in gpt3.__doc__


def test_gpt3_layers_alternate_dense_and_banded():
    c = gpt3.PRESETS["gpt3-175b"].config
    assert c.local_layers == tuple(i % 2 == 1 for i in range(96)) and c.sliding_window == 256
    tiny = gpt3.PRESETS["gpt3-tiny"].config
    assert tiny.n_heads * tiny.head_dim != tiny.d_model and tiny.local_layers == (False, True)


@pytest.mark.parametrize("mod", [gemma, gemma2, phi3, gpt3], ids=lambda m: m.__name__.split(".")[-1])
def test_docstring_lists_deviations(mod):
    items = mod.__doc__.split("\nDeviations:\n", 1)[1].strip()
    assert items.startswith("- ")
