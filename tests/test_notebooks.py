"""Execute every notebook in notebooks/ in quick mode (``JAXLM_QUICK=1``), as a Jupyter kernel would.

Each notebook is a jupytext percent-format ``.py`` file; it is converted with jupytext and run cell by cell
with nbclient (an ipykernel of this interpreter) in the notebooks/ directory, so a notebook that fails for
a user opening it fails here. Quick mode shrinks data, models and steps (about a minute each on 2 cores).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK_FILES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
TIMEOUT_PER_CELL = 600

pytestmark = pytest.mark.notebook
# notebook 06 (fine-tuning) runs in `make test`; the others take 1-2 minutes each and run in `make test-slow`
IN_DEFAULT_RUN = {"06_finetuning"}
NOTEBOOK_PARAMS = [pytest.param(p, id=p.stem, marks=() if p.stem in IN_DEFAULT_RUN else pytest.mark.slow)
                   for p in NOTEBOOK_FILES]


def run_notebook(path: Path) -> tuple[object, float]:
    """Convert ``path`` with jupytext and execute it with nbclient; returns (executed notebook, seconds)."""
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_PER_CELL, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - t0


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


def _images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def test_notebooks_are_found():
    names = {p.name for p in NOTEBOOK_FILES}
    assert {"01_attention.py", "02_transformer_translation.py", "03_gpt2_language_model.py",
            "04_bert_pretrain_finetune.py", "05_composing_models.py"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOK_PARAMS)
def test_notebook_runs_in_quick_mode(path: Path, monkeypatch):
    # the kernel inherits this process's environment
    monkeypatch.setenv("JAXLM_QUICK", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    nb, seconds = run_notebook(path)
    text = _outputs_text(nb)
    assert "quick mode: True" in text, "the notebook did not read JAXLM_QUICK"
    assert _images(nb) >= 1, "the notebook drew no figure"
    print(f"{path.name}: {seconds:.1f} s")


def test_quick_flag_is_read_by_every_notebook():
    for p in NOTEBOOK_FILES:
        src = p.read_text()
        assert 'os.environ.get("JAXLM_QUICK")' in src, f"{p.name} does not read JAXLM_QUICK"
        assert "# %%" in src and "jupytext" in src, f"{p.name} is not a jupytext percent notebook"


if __name__ == "__main__":  # run one notebook by hand: python tests/test_notebooks.py notebooks/01_attention.py
    import sys

    os.environ.setdefault("JAXLM_QUICK", "1")
    for arg in sys.argv[1:]:
        _, s = run_notebook(Path(arg))
        print(f"{arg}: {s:.1f} s")
