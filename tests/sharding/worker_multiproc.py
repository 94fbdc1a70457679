"""One of two processes (4 CPU devices each, gloo collectives) training gpt2-tiny on an 8-device global mesh.

usage: worker_multiproc.py PROCESS_ID NUM_PROCESSES PORT CKPT_DIR CONFIG[,CONFIG...]
Each process loads only its rows of every batch; both save the 5-step state with Orbax (into
CKPT_DIR/<config>) and report its fingerprint, then take one more step (its loss is the "next loss" a
restored copy must reproduce); process 0 prints the results as JSON.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jaxlm import distributed  # noqa: E402


def main(pid: int, nproc: int, port: int, ckpt_dir: str, which: list[str]) -> dict:
    distributed.initialize(distributed.Settings(f"127.0.0.1:{port}", nproc, pid), timeout_s=90)
    import _sharding_common as C
    import _sharding_step as L
    import jax
    import orbax.checkpoint as ocp

    from jaxlm import parallel

    assert jax.process_count() == nproc and jax.device_count() == 8, (jax.process_count(), jax.device_count())
    cfg = C.model_config("gpt2-tiny")
    data = C.batches("gpt2-tiny", cfg, n=C.STEPS + 1)
    opt = L.optimizer(cfg)
    out = {"local_devices": jax.local_device_count(), "global_devices": jax.device_count()}
    for conf in which:
        t0 = time.perf_counter()
        par = parallel.Parallel(C.CONFIGS[conf], model_cfg=cfg, batch_size=C.BATCH)
        step = L.make_step(cfg, opt, grad_axis_name=par.grad_axis_name)
        state = par.init_state(L.create_state, jax.random.key(0), cfg, opt)
        train = par.compile(step, state)
        rows = par.local_rows(C.BATCH)
        losses = []
        for i, b in enumerate(data):
            if i == C.STEPS:
                plain = par.unreplicate(state)
                fp = C.fingerprint(plain)
                with ocp.CheckpointManager(Path(ckpt_dir) / conf) as mngr:
                    mngr.save(C.STEPS, args=ocp.args.StandardSave(plain))
                    mngr.wait_until_finished()
            mine = {k: v[rows] for k, v in b.items()}  # this process's share only
            state, m = train(state, par.place_batch(mine, global_rows=C.BATCH))
            losses.append(float(m["loss"]))
        out[conf] = {"losses": losses[:-1], "next_loss": losses[-1], "fingerprint": fp,
                     "rows": [rows.start, rows.stop], "seconds": time.perf_counter() - t0}
    distributed.shutdown()
    return out


if __name__ == "__main__":
    res = main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5].split(","))
    import _sharding_common as C

    C.print_json(res)
