"""Generate with parameters sharded over a mesh and with them on one device; print both as JSON.

usage: worker_generate.py MODEL LAYOUT[,LAYOUT...]   (LAYOUT: "data2_fsdp2_tensor2", i.e. sizes per mesh axis)

Per layout: greedy tokens and the logits that chose them, sampled tokens (temperature, top-k, top-p, seed),
beam-search hypotheses and scores, the tokens :func:`jaxlm.generate.stream` yields, and the
PartitionSpecs the parameters had. The prompts are a ragged batch of 4, so a ``data`` axis splits rows.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sharding_common as C  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxlm import models, sharding  # noqa: E402
from jaxlm.generate import beam_search, generate, stream  # noqa: E402

N_NEW = 6


def layout(name: str) -> dict[str, int]:
    sizes = dict(re.findall(r"(data|fsdp|tensor)(\d+)", name))
    return {a: int(sizes.get(a, 1)) for a in sharding.MESH_AXES}


def run(params, cfg, prompts) -> dict:
    g = generate(params, cfg, prompts, max_new_tokens=N_NEW, greedy=True, return_logits=True)
    s = generate(params, cfg, prompts, max_new_tokens=N_NEW, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    b = beam_search(params, cfg, prompts[:2], beam_size=3, max_new_tokens=N_NEW)
    return {"greedy": g.tokens, "logits": np.asarray(g.logits).tolist(), "sampled": s.tokens,
            "beams": b.beams, "beam_scores": b.scores,
            "stream": list(stream(params, cfg, prompts[1], max_new_tokens=N_NEW, greedy=True))}


def main(name: str, which: list[str]) -> dict:
    module, cfg = models.get(name)
    cfg = C.model_config(name)
    params = module.init(jax.random.key(0), cfg)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, cfg.vocab_size, size=n).tolist() for n in (5, 3, 7, 1)]
    out = {"single": run(jax.device_put(params, jax.devices()[0]), cfg, prompts)}
    for lay in which:
        sizes = layout(lay)
        n = sizes["data"] * sizes["fsdp"] * sizes["tensor"]
        mesh = sharding.make_mesh(**sizes, devices=jax.devices()[:n])
        sharded = jax.device_put(params, sharding.param_shardings(module.spec(cfg), mesh))
        with sharding.use_mesh(mesh):
            res = run(sharded, cfg, prompts)
        flat = jax.tree_util.tree_flatten_with_path(sharded)[0]
        res["specs"] = {jax.tree_util.keystr(k, simple=True, separator="/"): [
            None if s is None else (list(s) if isinstance(s, tuple) else s) for s in x.sharding.spec]
            for k, x in flat}
        out[lay] = res
    return out


if __name__ == "__main__":
    C.print_json(main(sys.argv[1], sys.argv[2].split(",")))
