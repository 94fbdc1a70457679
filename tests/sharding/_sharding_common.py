"""Shared pieces of the multi-device worker scripts: the models, batches and the step they train.

The workers run in their own process with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (set by
``run_worker`` before jax is imported there). Each configuration trains the same 5 steps from the same
initial state on the same batches; the driver compares the losses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# (data, fsdp, tensor, parallel): one device, data=8, fsdp=8, tensor=2 x data=4, 2 x 2 x 2, pmap over 8
CONFIGS: dict[str, dict] = {
    "single": {"data": 1, "fsdp": 1, "tensor": 1, "parallel": "jit", "devices": 1},
    "data8": {"data": 8, "fsdp": 1, "tensor": 1, "parallel": "jit"},
    "fsdp8": {"data": 1, "fsdp": 8, "tensor": 1, "parallel": "jit"},
    "data4_tensor2": {"data": 4, "fsdp": 1, "tensor": 2, "parallel": "jit"},
    "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2, "parallel": "jit"},
    "pmap8": {"data": 8, "fsdp": 1, "tensor": 1, "parallel": "pmap"},
}
EXTRA_CONFIGS = {"data2_tensor4": {"data": 2, "fsdp": 1, "tensor": 4, "parallel": "jit"}}
BATCH, SEQ, STEPS = 16, 16, 5


def run_worker(script: str, *args: str, timeout: float = 600, devices: int = 8, env: dict | None = None
               ) -> dict:
    """Run ``tests/sharding/<script>`` in a fresh process with ``devices`` CPU devices; return the JSON it
    prints on its last stdout line. Fails with the worker's stderr when it fails."""
    e = dict(os.environ)
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e["JAX_PLATFORMS"] = "cpu"
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(env or {})
    proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=REPO)
    if proc.returncode != 0:
        raise AssertionError(f"{script} {args} failed (rc={proc.returncode}):\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def model_config(name: str):
    """The tiny preset, deterministic (no dropout) so every layout computes the same function."""
    from jaxlm import models

    _, cfg = models.get(name)
    return cfg.replace(dropout=0.0, attn_dropout=0.0, ffn_dropout=0.0)


def batches(name: str, cfg, n: int = STEPS, batch: int = BATCH, seq: int = SEQ, seed: int = 0) -> list[dict]:
    """``n`` numpy batches. Rows have different numbers of real tokens (padding), so a data-parallel
    step that averaged per-device means instead of the global token mean would not match."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lengths = rng.integers(seq // 4, seq + 1, size=batch)
        valid = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
        toks = rng.integers(3, cfg.vocab_size, size=(batch, seq + 1)).astype(np.int32)
        if name.startswith("transformer"):
            src = rng.integers(3, cfg.vocab_size, size=(batch, seq)).astype(np.int32)
            src_lengths = rng.integers(seq // 4, seq + 1, size=batch)
            src_valid = (np.arange(seq)[None] < src_lengths[:, None]).astype(np.int32)
            out.append({"src": src * src_valid, "src_valid": src_valid, "tgt_in": toks[:, :-1] * valid,
                        "tgt_valid": valid, "tgt_out": toks[:, 1:] * valid, "weights": valid.astype(np.float32)})
        else:
            out.append({"inputs": toks[:, :-1] * valid, "targets": toks[:, 1:] * valid,
                        "weights": valid.astype(np.float32)})
    return out


def fingerprint(tree) -> dict[str, list[float]]:
    """Per leaf ``[sum |x|, sum x * w]`` with fixed pseudo-random weights ``w`` (so a permuted or shifted
    shard changes it), computed on the devices: works on global arrays of a multi-process run."""
    import zlib

    import jax
    import jax.numpy as jnp

    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = [jax.tree_util.keystr(k) for k, _ in flat]
    xs = [x for _, x in flat]
    ws = [np.random.default_rng(zlib.crc32(n.encode())).standard_normal(np.shape(x)).astype(np.float32)
          for n, x in zip(names, xs)]
    f = jax.jit(lambda xs, ws: [jnp.stack([jnp.abs(x.astype(jnp.float32)).sum(),
                                            (x.astype(jnp.float32) * w).sum()]) for x, w in zip(xs, ws)])
    return {n: np.asarray(v).tolist() for n, v in zip(names, f(xs, ws))}


def same_fingerprint(a: dict, b: dict, rtol: float = 1e-5) -> list[str]:
    """Leaves whose fingerprints differ beyond float32 summation-order noise (empty = the same state)."""
    bad = [k for k in a if k not in b]
    for k in a:
        if k in b and any(abs(x - y) > rtol * (abs(a[k][0]) * 4 + 1e-6) for x, y in zip(a[k], b[k])):
            bad.append(k)
    return bad


def print_json(obj) -> None:
    sys.stdout.write("\n" + json.dumps(obj) + "\n")
    sys.stdout.flush()
