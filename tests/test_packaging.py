"""Packaging without the Makefile: a wheel builds from the source tree (``python -m build`` when the build
package is there, else ``pip wheel``), holds the package, its ``py.typed`` marker and the ``jaxlm`` script, and
keeps test / benchmark dependencies in extras; ``jaxlm --version`` answers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_jaxlm_version_and_py_typed():
    from jaxlm import cli

    assert (REPO / "jaxlm" / "py.typed").is_file()
    r = subprocess.run([sys.executable, "-m", "jaxlm.cli", "--version"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("jaxlm "), r.stderr
    assert "--version" in cli._usage()


@pytest.mark.slow
def test_wheel_builds_without_the_makefile(tmp_path: Path):
    if importlib.util.find_spec("build") is not None:
        cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)]
    else:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next(tmp_path.glob("jaxlm-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(meta).decode()
        entry = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {"jaxlm/py.typed", "jaxlm/cli.py", "jaxlm/data/hub.py", "jaxlm/data/stream.py"} <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "experiments/")) for n in names)
    assert "jaxlm = jaxlm.cli:main" in entry
    requires = [ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist:")]
    runtime = [ln for ln in requires if "extra ==" not in ln]
    for test_only in ("pytest", "torch", "transformers", "lm-eval", "wandb", "psutil", "ruff"):
        assert not any(ln.split()[1].lower().startswith(test_only) for ln in runtime), test_only
    assert any("extra == \"eval\"" in ln for ln in requires) and any("extra == \"wandb\"" in ln for ln in requires)
