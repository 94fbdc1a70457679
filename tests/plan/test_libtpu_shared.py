"""`jaxlm plan` on a machine without a TPU shares libtpu: two planners compile at once, and a planner
compiles beside a process that holds libtpu's lock file (``/tmp/libtpu_lockfile``; a run or any JAX
program that started the TPU backend). The planner sets ``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` itself
(:func:`jaxlm.plan.topology.share_libtpu`); without it the second process is refused."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxlm import plan as PL

REPO = Path(__file__).resolve().parents[2]
LOCKFILE = Path("/tmp/libtpu_lockfile")

pytestmark = [
    pytest.mark.skipif(not PL.has_libtpu(), reason="needs libtpu (pip install 'jax[tpu]'); no TPU needed"),
    pytest.mark.skipif(bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")),
                       reason="a TPU is attached: libtpu is not shared on a TPU host"),
]


def _env(**over: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("ALLOW_MULTIPLE_LIBTPU_LOAD", None)  # the planner must allow it itself
    for k, v in over.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def _planner() -> subprocess.Popen:
    # llama-tiny on a 2x2 v5e slice: the TPU compiler plans it in a few seconds
    return subprocess.Popen([sys.executable, "-m", "jaxlm.cli", "plan", "llama-tiny", "--topology", "v5e:2x2"],
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        assert "XLA TPU compiler memory analysis" in out and "FITS" in out, out


def test_two_planners_compile_at_once():
    _check([_planner(), _planner()])


def test_a_planner_compiles_beside_a_process_holding_the_libtpu_lock():
    # a JAX program with no JAX_PLATFORMS starts the TPU backend, and libtpu takes its lock file for the
    # process's lifetime (it finds no TPU and falls back to the CPU); it holds it until stdin closes
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, jax; jax.devices(); "
                               f"print(os.path.exists({str(LOCKFILE)!r}), flush=True); sys.stdin.read()"],
        cwd=REPO, env=_env(JAX_PLATFORMS=None), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    try:
        held = holder.stdout.readline().strip()
        if held != "True":
            pytest.skip(f"this libtpu took no lock file at TPU-backend start-up (holder said {held!r})")
        t0 = time.monotonic()
        _check([_planner()])
        assert holder.poll() is None, "the holder exited before the planner finished"
        print(f"planned beside the lock holder in {time.monotonic() - t0:.1f} s")
    finally:
        holder.stdin.close()  # it exits, and libtpu removes its lock file
        holder.wait(timeout=60)
