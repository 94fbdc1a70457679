"""Greedy generation from weight-only quantized parameters sharded over 8 CPU devices and on one device;
print both (tokens, logits, the PartitionSpecs of q and scale) as JSON.

usage: worker_quant_generate.py MODEL MODE GROUP [KEY=INT ...]   (MODE: int8 | int4; GROUP: the group size or 0
for the default; KEY=INT: model config overrides, e.g. d_model=576)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sharding_common as C  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxlm import models, sharding  # noqa: E402
from jaxlm.generate import generate  # noqa: E402
from jaxlm.nn import quant  # noqa: E402


def main(name: str, mode: str, group: int, overrides: dict[str, int]) -> dict:
    module, _ = models.get(name)
    cfg = C.model_config(name).replace(**overrides)
    spec = module.spec(cfg)
    params = quant.quantize(module.init(jax.random.key(0), cfg), spec, mode, group or None, embed=True, head=True)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, cfg.vocab_size, size=n).tolist() for n in (5, 3, 7, 1)]

    def run(p):
        g = generate(p, cfg, prompts, max_new_tokens=6, greedy=True, return_logits=True)
        return {"greedy": g.tokens, "logits": np.asarray(g.logits).tolist()}

    out = {"single": run(jax.device_put(params, jax.devices()[0]))}
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    sharded = jax.device_put(params, quant.shardings(params, spec, mesh))
    with sharding.use_mesh(mesh):
        out["sharded"] = run(sharded)
    w = sharded["layers"]["attn"]["q"]["w"]
    spec_of = lambda a: [None if s is None else (list(s) if isinstance(s, tuple) else s)  # noqa: E731
                         for s in a.sharding.spec]
    out["specs"] = {f: spec_of(getattr(w, f)) for f in ("q", "scale")}
    out["specs"]["wo_scale"] = spec_of(sharded["layers"]["mlp"]["wo"]["w"].scale)
    out["groups"] = {k: d["group"] for k, d in quant.describe(params).items()}
    return out


if __name__ == "__main__":
    kv = dict(a.split("=", 1) for a in sys.argv[4:])
    C.print_json(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), {k: int(v) for k, v in kv.items()}))
