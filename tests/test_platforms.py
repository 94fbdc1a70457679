"""On a machine without a TPU, jaxlm never lets JAX start libtpu (no start-up noise, no lock file taken);
on a TPU VM, a GPU machine or with JAX_PLATFORMS set, it changes nothing (jaxlm/platforms.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxlm import platforms
from tests.train.conftest import EXPERIMENT, REPO, write_corpus

# what libtpu printed at the start of every CPU run while JAX started its TPU backend
LIBTPU_LINES = ("Failed to find host bounds", "unexpected worker hostname", "Logging before InitGoogle",
                "TPU_WORKER_HOSTNAMES", "libtpu", "TPU accelerator type")


def _env() -> dict:
    """This machine's environment as a user's shell has it: no JAX_PLATFORMS."""
    return {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "JAXLM_DEBUG")}


needs_no_tpu = pytest.mark.skipif(platforms.tpu_attached() or platforms.gpu_visible(),
                                  reason="a TPU or GPU is attached: JAX's own choice is kept")


@needs_no_tpu
def test_cpu_training_prints_nothing_from_libtpu(tmp_path: Path):
    exp = tmp_path / "tiny.py"
    exp.write_text(EXPERIMENT.format(path=str(write_corpus(tmp_path / "corpus.txt"))))
    p = subprocess.run([sys.executable, "-m", "jaxlm.cli", "train", str(exp), "train.steps=2",
                        "--run-dir", str(tmp_path / "run")], cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    hits = [ln for ln in p.stderr.splitlines() if any(s in ln for s in LIBTPU_LINES)]
    assert hits == [], hits


@needs_no_tpu
def test_import_jaxlm_starts_no_tpu_backend():
    """libtpu is never loaded, so its lock file (/tmp/libtpu_lockfile) is never taken: a planner can run
    beside this process. Also when jax was imported before jaxlm."""
    code = ("import jax, jaxlm, os\n"
            "from jax._src import xla_bridge\n"
            "from jax._src.lib import xla_client\n"
            "print(jax.devices()[0].platform, sorted(xla_bridge.backends()), "
            "xla_client.pjrt_plugin_loaded('tpu'), os.environ['JAX_PLATFORMS'])\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["cpu", "['cpu']", "False", "cpu"]
    assert not [ln for ln in p.stderr.splitlines() if any(s in ln for s in LIBTPU_LINES)]


def test_jax_platforms_set_by_the_user_is_kept(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "")
    assert platforms.skip_absent_tpu() is None
    assert os.environ["JAX_PLATFORMS"] == ""


def test_a_tpu_vm_is_left_alone(monkeypatch):
    """On a TPU VM (JAX's PCI scan finds chips) JAX keeps its own choice and finds the chips."""
    from jax._src import hardware_utils

    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(hardware_utils, "num_available_tpu_chips_and_device_id", lambda: (4, "v5e"))
    assert platforms.tpu_attached()
    assert platforms.skip_absent_tpu() is None
    assert "JAX_PLATFORMS" not in os.environ


def test_a_gpu_machine_is_left_alone(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(platforms, "tpu_attached", lambda: False)
    monkeypatch.setattr(platforms.os.path, "exists", lambda p: p == "/dev/nvidiactl")
    assert platforms.gpu_visible()
    assert platforms.skip_absent_tpu() is None
