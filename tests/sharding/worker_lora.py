"""LoRA on a mesh: adapters born sharded by their logical axes, forward and adapter-only train steps on
8 CPU devices; print logits, losses and the adapters' PartitionSpecs per layout as JSON.

usage: worker_lora.py MODEL LAYOUT[,LAYOUT...]   (LAYOUT as in worker_generate.py, e.g. "data2_fsdp2_tensor2")
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sharding_common as C  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from worker_generate import layout  # noqa: E402

from jaxlm import models, sharding  # noqa: E402
from jaxlm import params as P  # noqa: E402
from jaxlm.finetune import lora  # noqa: E402
from jaxlm.train.tasks import make_task  # noqa: E402

LC = lora.LoRAConfig(targets=("attn/(q|k|v|o)", "mlp/.*"), rank=4, alpha=8.0)


def run(base, adapters, cfg, batch, mesh=None) -> dict:
    opt = optax.adam(1e-2)
    step = jax.jit(lora.make_train_step(make_task("causal_lm"), cfg, LC, opt))
    fwd = jax.jit(lambda b, a: models.family_of(cfg).apply(lora.combine(b, a, LC), batch["inputs"], cfg))
    opt_state = opt.init(adapters)
    losses = []
    with sharding.use_mesh(mesh):
        for _s in range(2):
            adapters, opt_state, m = step(adapters, opt_state, base, batch, None)
            losses.append(float(m["loss"]))
        logits = np.asarray(fwd(base, adapters))
    flat = jax.tree_util.tree_flatten_with_path(adapters)[0]
    specs = {jax.tree_util.keystr(k, simple=True, separator="/"): [
        None if s is None else (list(s) if isinstance(s, tuple) else s) for s in x.sharding.spec]
        for k, x in flat} if mesh is not None else {}
    return {"losses": losses, "logits_sum": float(np.abs(logits).sum()), "logits": logits[:, :4].tolist(),
            "specs": specs}


def main(name: str, which: list[str]) -> dict:
    module, _ = models.get(name)
    cfg = C.model_config(name)
    base = module.init(jax.random.key(0), cfg)
    adapters = lora.init(jax.random.key(1), cfg, LC)
    batch = {k: jnp.asarray(v) for k, v in C.batches(name, cfg, n=1)[0].items()}
    out = {"single": run(base, adapters, cfg, batch)}
    for lay in which:
        sizes = layout(lay)
        n = sizes["data"] * sizes["fsdp"] * sizes["tensor"]
        mesh = sharding.make_mesh(**sizes, devices=jax.devices()[:n])
        b = jax.device_put(base, sharding.param_shardings(module.spec(cfg), mesh))
        a = lora.init(jax.random.key(1), cfg, LC, mesh=mesh)  # born sharded: the same values as on one device
        np.testing.assert_array_equal(np.asarray(P.flatten(a)["layers/attn/q/lora_a"]),
                                      np.asarray(P.flatten(adapters)["layers/attn/q/lora_a"]))
        bt = jax.device_put(batch, sharding.batch_sharding(mesh))
        out[lay] = run(b, a, cfg, bt, mesh)
    return out


if __name__ == "__main__":
    C.print_json(main(sys.argv[1], sys.argv[2].split(",")))
