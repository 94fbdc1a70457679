"""Save on one mesh, restore onto others: parameters identical, next-step loss identical.

usage: worker_checkpoint.py CKPT_DIR [MULTIPROC_DIR]
1. train gpt2-tiny on a data=2 x fsdp=2 x tensor=2 mesh, save after 2 steps with an Orbax
   CheckpointManager (async), go on there (step 3's loss is the reference next-step loss) to 5 steps;
2. restore onto an 8 x 1 x 1 mesh and onto one device, straight into their shardings (ShapeDtypeStruct
   targets from Parallel.abstract_state), compare every leaf with the saved state and take the next step;
3. with MULTIPROC_DIR: restore each checkpoint the two-process run saved (MULTIPROC_DIR/<config>, after 5
   steps) onto this single 8-device process: its fingerprint and its next-step loss, for the driver to
   compare with what the processes had.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sharding_common as C  # noqa: E402
import _sharding_step as L  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from jaxlm import parallel  # noqa: E402

LAYOUTS = {"data8": {"data": 8}, "single": {"data": 1}}


def leaves(state) -> dict:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(state)[0]
            if not jax.dtypes.issubdtype(getattr(v, "dtype", np.float32), jax.dtypes.prng_key)}


def main(ckpt_dir: str, multiproc_dir: str | None) -> dict:
    cfg = C.model_config("gpt2-tiny")
    data = C.batches("gpt2-tiny", cfg, n=C.STEPS + 1)
    opt = L.optimizer(cfg)
    out: dict = {}
    src = parallel.Parallel(C.CONFIGS["data2_fsdp2_tensor2"], model_cfg=cfg, batch_size=C.BATCH)
    state = src.init_state(L.create_state, jax.random.key(0), cfg, opt)
    fn = src.compile(L.make_step(cfg, opt), state, donate=False)
    losses = []
    for i, b in enumerate(data[: C.STEPS]):
        if i == 2:
            saved = leaves(state)
            with ocp.CheckpointManager(Path(ckpt_dir)) as mngr:
                mngr.save(2, args=ocp.args.StandardSave(state))
                mngr.wait_until_finished()
            out["saved_spec_q"] = str(L.params_of(state)["layers"]["attn"]["q"]["w"].sharding.spec)
        state, m = fn(state, src.place_batch(b))
        losses.append(float(m["loss"]))
    out["reference_next_loss"], out["losses"] = losses[2], losses
    for name, mc in LAYOUTS.items():
        devices = jax.devices()[:1] if name == "single" else None
        par = parallel.Parallel(mc, model_cfg=cfg, batch_size=C.BATCH, devices=devices)
        target = par.abstract_state(jax.eval_shape(lambda k: L.create_state(k, cfg, opt), jax.random.key(0)))
        with ocp.CheckpointManager(Path(ckpt_dir)) as mngr:
            restored = mngr.restore(2, args=ocp.args.StandardRestore(target))
        got = leaves(restored)
        same = sorted(saved) == sorted(got) and all(np.array_equal(saved[k], got[k]) for k in saved)
        q = L.params_of(restored)["layers"]["attn"]["q"]["w"]
        step = L.make_step(cfg, opt, grad_axis_name=par.grad_axis_name)
        _, m = par.compile(step, restored)(restored, par.place_batch(data[2]))
        out[name] = {"identical": bool(same), "n_leaves": len(got), "next_loss": float(m["loss"]),
                     "q_spec": str(q.sharding.spec), "q_devices": len(q.sharding.device_set)}
    if multiproc_dir:
        for conf in sorted(p.name for p in Path(multiproc_dir).iterdir()):
            with ocp.CheckpointManager(Path(multiproc_dir) / conf) as mngr:
                restored = mngr.restore(mngr.latest_step(),
                                        args=ocp.args.StandardRestore(src.abstract_state(state)))
            fp = C.fingerprint(restored)
            _, m = fn(restored, src.place_batch(data[C.STEPS]))
            out["multiproc_" + conf] = {"fingerprint": fp, "next_loss": float(m["loss"])}
    return out


if __name__ == "__main__":
    C.print_json(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
