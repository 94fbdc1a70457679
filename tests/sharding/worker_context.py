"""Context parallelism on 8 CPU devices: train a tiny model 2 steps on packed rows (several documents per
row, causal masks) under several meshes with ``context`` > 1; print losses and per-device temporary bytes
of the compiled step (XLA's memory analysis) as JSON.

usage: worker_context.py MODEL
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sharding_common as C  # noqa: E402
import _sharding_step as L  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxlm import parallel  # noqa: E402

MESHES = {
    "single": ({"data": 1}, 1),
    "context4": ({"data": 2, "context": 4}, 8),
    "context2_fsdp2_tensor2": ({"data": 1, "fsdp": 2, "context": 2, "tensor": 2}, 8),
}


def packed(cfg, n: int, B: int, T: int, seed: int = 0) -> list[dict]:
    """Rows of 1-4 documents each (segment ids 1.., positions restarting per document), the targets of a
    document's last token weighted 0 as :func:`jaxlm.data.packing.pack` does."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        seg = np.zeros((B, T), np.int32)
        for r in range(B):
            cuts = np.sort(rng.choice(np.arange(1, T), size=rng.integers(0, 4), replace=False))
            seg[r] = 1 + np.searchsorted(cuts, np.arange(T), side="right")
        pos = np.zeros_like(seg)
        for r in range(B):
            for t in range(1, T):
                pos[r, t] = 0 if seg[r, t] != seg[r, t - 1] else pos[r, t - 1] + 1
        toks = rng.integers(3, cfg.vocab_size, size=(B, T + 1)).astype(np.int32)
        w = np.ones((B, T), np.float32)
        w[:, :-1] *= seg[:, 1:] == seg[:, :-1]
        out.append({"inputs": toks[:, :-1], "targets": toks[:, 1:], "weights": w, "segment_ids": seg,
                    "positions": pos})
    return out


def main(name: str) -> dict:
    cfg = C.model_config(name)
    data = packed(cfg, 2, 8, 64)
    opt = L.optimizer(cfg)
    out = {}
    for label, (mesh, n) in MESHES.items():
        par = parallel.Parallel(mesh, model_cfg=cfg, batch_size=8, devices=jax.devices()[:n], seq_len=64)
        state = par.init_state(L.create_state, jax.random.key(0), cfg, opt)
        train = par.compile(L.make_step(cfg, opt), state)
        losses = []
        for b in data:
            state, m = train(state, par.place_batch(b))
            losses.append(float(m["loss"]))
        out[label] = {"losses": losses}
    # per-device temporaries of the compiled step at a longer sequence: data=2 x context=c on 2c devices
    cfg_long = cfg.replace(max_len=512)
    for c in (1, 4):
        par = parallel.Parallel({"data": 2, "context": c}, model_cfg=cfg_long, batch_size=4,
                                devices=jax.devices()[:2 * c], seq_len=512)
        shapes = jax.eval_shape(lambda k: L.create_state(k, cfg_long, opt), jax.random.key(0))
        state = par.abstract_state(shapes)
        bs = par.batch_sharding()
        batch = {k: jax.ShapeDtypeStruct((4, 512), np.float32 if k == "weights" else np.int32, sharding=bs)
                 for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
        mem = par.lower(L.make_step(cfg_long, opt), state, batch).compile().memory_analysis()
        out[f"temp_context{c}"] = int(mem.temp_size_in_bytes)
    return out


def dropout(name: str) -> dict:
    """Dropout on: jit on one device, jit data=8, jit 2 x 2 x 2 and pmap over 8, 2 steps each."""
    from jaxlm import models

    cfg = models.get(name)[1]  # the preset's own dropout (GPT-2: 0.1)
    data = packed(cfg, 2, 8, 32)
    opt = L.optimizer(cfg)
    out = {}
    for label, mesh, n in (("single", {"data": 1}, 1), ("data8", {"data": 8}, 8),
                           ("data2_fsdp2_tensor2", {"data": 2, "fsdp": 2, "tensor": 2}, 8),
                           ("pmap8", {"data": 8, "parallel": "pmap"}, 8)):
        par = parallel.Parallel(mesh, model_cfg=cfg, batch_size=8, devices=jax.devices()[:n], seq_len=32)
        state = par.init_state(L.create_state, jax.random.key(0), cfg, opt)
        train = par.compile(L.make_step(cfg, opt, grad_axis_name=par.grad_axis_name), state)
        losses = []
        for b in data:
            state, m = train(state, par.place_batch(b))
            losses.append(float(m["loss"]))
        out[label] = {"losses": losses}
    return out


if __name__ == "__main__":
    print(json.dumps(dropout(sys.argv[2]) if sys.argv[1] == "--dropout" else main(sys.argv[1])))
