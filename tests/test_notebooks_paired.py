"""Every jupytext percent notebook in notebooks/ has a paired .ipynb (Jupyter / Colab open it) with the same
cells and no outputs (small diffs). `make notebooks` regenerates the .ipynb files."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PY = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("path", PY, ids=[p.stem for p in PY])
def test_ipynb_is_paired_in_sync_and_stripped(path: Path):
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    ipynb = path.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.name} is missing: run `make notebooks`"
    want = [(c.cell_type, c.source) for c in jupytext.read(path).cells]
    nb = nbformat.read(ipynb, as_version=4)
    got = [(c.cell_type, c.source) for c in nb.cells]
    assert got == want, f"{ipynb.name} differs from {path.name}: run `make notebooks`"
    assert not any(c.get("outputs") for c in nb.cells), f"{ipynb.name} holds outputs: run `make notebooks`"
