"""Train a tiny model 5 steps under several mesh layouts in one process; print the losses as JSON.

usage: worker_parity.py MODEL[:odd] CONFIG[,CONFIG...]   (CONFIG names from _sharding_common.CONFIGS)
Also prints, per layout, the PartitionSpecs of a few parameters and of Adam's moments, the shard shape of
the token embedding and the warnings logged. ``:odd`` = vocab 511 and 2 key/value heads (dimensions that
a tensor=4 mesh does not divide).
"""

from __future__ import annotations

import io
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sharding_common as C  # noqa: E402
import _sharding_step as L  # noqa: E402
import jax  # noqa: E402

from jaxlm import parallel, sharding  # noqa: E402

PROBE = ("embed/tokens", "layers/attn/q/w", "layers/attn/k/w", "layers/attn/o/w", "layers/mlp/wi/w", "layers/mlp/wo/w",
         "layers/mlp/experts/wi_0/w", "layers/mlp/experts/wo/w", "layers/mlp/router/w",
         "decoder/layers/attn/q/w", "encoder/layers/mlp/wi/w", "layers/attn/q/b", "layers/attn/k/b",
         "layers/post_norm1/scale", "layers/mlp/wi_0/w")


def spec_of(x) -> list:
    return [None if s is None else (list(s) if isinstance(s, tuple) else s) for s in x.sharding.spec]


def main(name: str, which: list[str]) -> dict:
    name, _, variant = name.partition(":")
    cfg = C.model_config(name)
    if variant == "odd":
        cfg = cfg.replace(vocab_size=511, n_kv_heads=2)
    data = C.batches(name, cfg)
    opt = L.optimizer(cfg)
    out = {}
    for conf in which:
        t0 = time.perf_counter()
        buf = io.StringIO()
        handler = logging.StreamHandler(buf)
        logging.getLogger("jaxlm").addHandler(handler)
        mc = dict({**C.CONFIGS, **C.EXTRA_CONFIGS}[conf])
        devices = jax.devices()[: mc.pop("devices", jax.device_count())]
        par = parallel.Parallel(mc, model_cfg=cfg, batch_size=C.BATCH, devices=devices)
        step = L.make_step(cfg, opt, grad_axis_name=par.grad_axis_name)
        state = par.init_state(L.create_state, jax.random.key(0), cfg, opt)
        train = par.compile(step, state)
        constraints = None
        if par.mode == "jit":  # activation constraints made it into the compiled step
            with sharding.use_mesh(par.mesh):
                text = train.jitted.lower(state, par.place_batch(data[0])).as_text()
            constraints = text.count("sharding_constraint")
        losses = []
        for b in data:
            state, m = train(state, par.place_batch(b))
            losses.append(float(m["loss"]))
        eval_loss = None
        if conf in ("data2_fsdp2_tensor2", "pmap8"):  # evaluation of the trained (unreplicated) params
            params = L.params_of(par.unreplicate(state))
            ev = par.compile_eval(L.make_eval(cfg), params)
            eval_loss = float(ev(params, par.place_batch(data[0], for_eval=True))["loss"])
        specs = {}  # read after training: the step's out_shardings kept the layout
        if par.mode == "jit":
            for kp, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
                path = "/".join(str(n) for n in parallel._names(kp))
                if any(path.endswith(p) for p in PROBE):
                    specs[path] = spec_of(leaf)
        logging.getLogger("jaxlm").removeHandler(handler)
        emb = L.params_of(state)["embed"]["tokens"]
        out[conf] = {"losses": losses, "specs": specs, "seconds": time.perf_counter() - t0,
                     "mesh": dict(par.mesh.shape), "log": buf.getvalue(), "constraints": constraints,
                     "eval_loss": eval_loss,
                     "shard_shape": list(emb.addressable_shards[0].data.shape) if par.mode == "jit" else None}
    return out


if __name__ == "__main__":
    C.print_json(main(sys.argv[1], sys.argv[2].split(",")))
