"""Expert parallelism: a tiny Mixtral (8 experts, top-2) trains the same losses on 8 simulated CPU devices
with its experts sharded as on one device, and its parameters carry the PartitionSpecs the rules say
(``experts -> fsdp``, see jaxlm/nn/moe.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sharding_common import run_worker  # noqa: E402

pytestmark = pytest.mark.multidevice


@pytest.mark.slow  # three layouts compiled in a subprocess, like the other parity tests
def test_mixtral_experts_sharded_train_the_same_losses():
    res = run_worker("worker_parity.py", "mixtral-tiny", "single,fsdp8,data2_fsdp2_tensor2", timeout=1800)
    ref = np.array(res["single"]["losses"])
    assert ref.shape == (5,) and np.all(np.isfinite(ref)) and not np.allclose(ref, ref[0])
    for name in ("fsdp8", "data2_fsdp2_tensor2"):
        np.testing.assert_allclose(res[name]["losses"], ref, rtol=1e-5, err_msg=name)
    # [L, E, D, F] experts: E on fsdp (whole experts per device), F on tensor; the router [L, D, E] keeps
    # its expert dim replicated
    expect = {
        "fsdp8": {"layers/mlp/experts/wi_0/w": [None, "fsdp", None, None],
                  "layers/mlp/experts/wo/w": [None, "fsdp", None, None],
                  "layers/mlp/router/w": [None, "fsdp", None]},
        "data2_fsdp2_tensor2": {"layers/mlp/experts/wi_0/w": [None, "fsdp", None, "tensor"],
                                "layers/mlp/experts/wo/w": [None, "fsdp", "tensor", None],
                                "layers/mlp/router/w": [None, "fsdp", None]},
    }
    for name, want in expect.items():
        specs = res[name]["specs"]
        for path, spec in want.items():
            leaves = {k: v for k, v in specs.items() if k.endswith("/" + path)}
            assert f"params/{path}" in leaves and len(leaves) == 3, (name, path, sorted(leaves))  # + Adam mu, nu
            for k, v in leaves.items():
                assert v == spec, (name, k, v, spec)
