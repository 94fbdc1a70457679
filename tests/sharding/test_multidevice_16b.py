"""Issue 16's families on 8 CPU devices: Gemma 2's tiny preset (local/global layers, soft-caps, post-norms)
trains the same losses sharded 2 x 2 x 2 (data x fsdp x tensor) and tensor-parallel as on one device, and
its new parameters (the post-norm scales) are sharded by the same logical-axis rules as the rest."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sharding_common import run_worker  # noqa: E402

pytestmark = pytest.mark.multidevice


def test_every_new_parameter_has_logical_axes_the_rules_know():
    from jaxlm import params as P
    from jaxlm import sharding
    from jaxlm.models import gemma, gemma2, gpt3, phi3

    known = {a for a, _ in sharding.RULES}
    for mod in (gemma, gemma2, phi3, gpt3):
        cfg = next(p.config for n, p in mod.PRESETS.items() if n.endswith("-tiny"))
        for path, p in P.flatten(mod.spec(cfg)).items():
            assert len(p.axes) == len(p.shape) and set(p.axes) - {None} <= known, (mod.__name__, path, p.axes)


@pytest.mark.slow
def test_gemma2_tiny_sharded_training_equals_one_device():
    res = run_worker("worker_parity.py", "gemma2-tiny", "single,data4_tensor2,data2_fsdp2_tensor2")
    ref = np.array(res["single"]["losses"])
    assert ref.shape == (5,) and np.all(np.isfinite(ref)) and not np.allclose(ref, ref[0])
    for name in ("data4_tensor2", "data2_fsdp2_tensor2"):
        np.testing.assert_allclose(res[name]["losses"], ref, rtol=1e-5, err_msg=name)
    specs = res["data2_fsdp2_tensor2"]["specs"]
    assert specs["params/layers/attn/q/w"] == [None, "fsdp", "tensor", None]
    assert specs["params/layers/mlp/wi_0/w"] == [None, "fsdp", "tensor"]
    assert specs["params/layers/post_norm1/scale"] == [None, "fsdp"]  # Gemma 2's post-norms: embed -> fsdp
    assert res["data4_tensor2"]["specs"]["params/layers/attn/k/w"] == [None, None, "tensor", None]
