"""Issue 16 (part a) on 8 CPU devices: Qwen2's tiny preset (q/k/v biases, grouped-query attention) trains
the same losses under every mesh layout as on one device, with its new bias parameters sharded by the
rules; Mistral's (sliding window) generates the same tokens from tensor-parallel parameters."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sharding_common import run_worker  # noqa: E402

pytestmark = [pytest.mark.multidevice, pytest.mark.slow]


def test_qwen2_tiny_trains_the_same_losses_on_every_layout():
    layouts = ("single", "fsdp8", "data4_tensor2", "data2_fsdp2_tensor2")
    res = run_worker("worker_parity.py", "qwen2-tiny", ",".join(layouts))
    ref = np.array(res["single"]["losses"])
    assert ref.shape == (5,) and np.all(np.isfinite(ref)) and not np.allclose(ref, ref[0])
    for name in layouts:
        np.testing.assert_allclose(res[name]["losses"], ref, rtol=1e-5, err_msg=name)
    # the q/k/v biases [L, heads, head_dim] follow their heads onto the tensor axis
    for name in ("data4_tensor2", "data2_fsdp2_tensor2"):
        specs = res[name]["specs"]
        for path in ("layers/attn/q/b", "layers/attn/k/b"):
            leaves = {k: v for k, v in specs.items() if k.endswith("/" + path)}
            assert len(leaves) == 3, (name, path, sorted(specs))  # the parameter and Adam's mu, nu
            assert all(v == [None, "tensor", None] for v in leaves.values()), (name, leaves)


@pytest.mark.parametrize("model", ["qwen2-tiny", "mistral-tiny"])
def test_generation_with_sharded_params_equals_one_device(model):
    layouts = ("tensor2", "data2_fsdp2_tensor2")
    res = run_worker("worker_generate.py", model, ",".join(layouts))
    ref = res["single"]
    for lay in layouts:
        for key in ("greedy", "sampled", "beams", "stream"):
            assert res[lay][key] == ref[key], (lay, key)
        np.testing.assert_allclose(res[lay]["logits"], ref["logits"], atol=1e-5, err_msg=lay)
