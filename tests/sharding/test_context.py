"""Context parallelism (``mesh.context``): the sequence dimension sharded over devices trains the same
losses as one device (packed documents, causal masks), per-device activation memory falls with the
context size, and a context size that does not divide the sequence is one clear error."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sharding_common import run_worker  # noqa: E402

from jaxlm import parallel, sharding  # noqa: E402
from jaxlm.config import ConfigError  # noqa: E402
from jaxlm.train import config as C  # noqa: E402


@pytest.mark.multidevice
@pytest.mark.parametrize("model", ["llama-tiny", pytest.param("gpt2-tiny", marks=pytest.mark.slow),
                                   pytest.param("mixtral-tiny", marks=pytest.mark.slow)])
def test_context_parallel_losses_equal_one_device(model):
    res = run_worker("worker_context.py", model)
    ref = np.array(res["single"]["losses"])
    assert np.all(np.isfinite(ref)) and not np.allclose(ref, ref[0])
    for name in ("context4", "context2_fsdp2_tensor2"):
        got = np.array(res[name]["losses"])
        print(model, name, "max relative difference", float(np.max(np.abs(got / ref - 1))))
        np.testing.assert_allclose(got, ref, rtol=1e-5, err_msg=name)
    # per-device temporaries (XLA's memory analysis, T=512) fall with the context size
    t1, t4 = (res[f"temp_context{c}"] for c in (1, 4))
    print(model, "per-device temporaries context 1/4:", t1, t4)
    assert t4 < 0.5 * t1


def test_context_must_divide_the_sequence():
    mesh = sharding.make_mesh(1, 1, 1, context=1)
    parallel.validate(mesh, seq_len=100)
    with pytest.raises(ConfigError, match=r"mesh.context=3 does not divide data.seq_len=128.*data.seq_len=129"):
        from jaxlm.nn import context

        context.check_divides(128, 3)
    # on 8 devices context=8 for 100 tokens: the sizes offered divide both, so the mesh still multiplies out
    with pytest.raises(ConfigError, match=r"data.seq_len=96 or mesh.context in \[4, 2\]"):
        context.check_divides(100, 8)
    with pytest.raises(ConfigError, match="mesh.context=.* must be an integer"):
        C.MeshConfig(context=0)


def test_plan_checks_context_against_the_sequence():
    from jaxlm import plan as PL

    run = C.apply_overrides(C.RunConfig(model="gpt2-tiny"), {"mesh.context": "3", "mesh.data": "-1",
                                                            "data.seq_len": "128"})
    with pytest.raises(ConfigError, match="mesh.context=3 does not divide data.seq_len=128"):
        PL.estimate(run, PL.parse_topology("cpu:6"))


@pytest.mark.slow
@pytest.mark.multidevice
def test_dropout_masks_jit_independent_of_mesh_pmap_per_device():
    """docs/parallelism.md "pmap, and where it differs from jit: dropout": under jit the dropout masks are drawn for the global batch, so
    every mesh trains the same losses as one device with dropout on; pmap draws per-device masks (the key
    folded with the device index), so its losses differ slightly."""
    res = run_worker("worker_context.py", "--dropout", "gpt2-tiny")
    ref = np.array(res["single"]["losses"])
    for name in ("data8", "data2_fsdp2_tensor2"):
        np.testing.assert_allclose(res[name]["losses"], ref, rtol=1e-5, err_msg=name)
    rel = np.abs(np.array(res["pmap8"]["losses"]) / ref - 1)
    print("pmap vs jit with dropout, relative:", rel)
    assert rel[-1] > 1e-6 and np.all(rel < 1e-2)
