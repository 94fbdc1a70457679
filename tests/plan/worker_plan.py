"""Compile train steps with `jaxlm.plan` and print the plans as JSON (last stdout line).

    worker_plan.py TOPOLOGY 'PRESET:REMAT:DATAxFSDPxTENSOR[:BATCH:SEQ]' ...

Run in its own process: `cpu:8` needs XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax starts.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    from jaxlm import plan as PL
    from jaxlm.train import config as C

    topo = PL.parse_topology(sys.argv[1])
    out = {}
    for spec in sys.argv[2:]:
        name, remat, lay, *rest = spec.split(":")
        d, f, t = lay.split("x")
        batch, seq = rest or ("16", "64")
        task = {"bert": "mlm", "transformer": "seq2seq"}.get(name.split("-")[0], "causal_lm")
        run = C.apply_overrides(C.RunConfig(model=name), {
            "model.remat": remat, "mesh.data": d, "mesh.fsdp": f, "mesh.tensor": t, "train.batch_size": batch,
            "data.seq_len": seq, "train.task": task})
        p = PL.compile_plan(run, topo)
        out[spec] = {"total": p.total, "analytic": p.analytic["total"], "params": p.params, "opt_state": p.opt_state,
                     "temporaries": p.temporaries, "fits": p.fits, "error": p.error, "source": p.source,
                     "analytic_params": PL.estimate(run, topo).params, "summary": p.summary()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
