"""``jaxlm models``: every preset with family, shape and exact parameter count (nothing allocated)."""

from __future__ import annotations

import argparse

from jaxlm.commands import Parser
from jaxlm.models import REGISTRY
from jaxlm.params import count


def table() -> str:
    header = ("preset", "family", "layers", "d_model", "heads", "kv_heads", "params")
    rows = []
    for name, (mod, preset) in REGISTRY.items():
        c = preset.config
        layers = f"{c.n_layers}+{c.dec_layers}" if hasattr(c, "dec_layers") else str(c.n_layers)
        rows.append((name, type(c).family, layers, str(c.d_model), str(c.n_heads), str(c.kv_heads),
                     str(count(mod.spec(c)))))
    w = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(x.ljust(w[i]) if i < 2 else x.rjust(w[i]) for i, x in enumerate(r))  # noqa: E731
    return "\n".join([fmt(header), fmt(tuple("-" * n for n in w)), *map(fmt, rows)])


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``jaxlm models`` (no arguments but ``--help``)."""
    return Parser(prog="jaxlm models", description=__doc__)


def main(argv: list[str]) -> int:
    parser().parse_args(argv)
    print(table())
    return 0
