"""`jaxlm train` with finetune.lora on a mesh: the same LoRA run on one device, on a 2 x 2 x 2 mesh and under
pmap over 8 devices; prints each layout's losses and the adapters' PartitionSpecs as JSON.

usage: worker_lora_train.py TMP_DIR LAYOUT[,LAYOUT...]   (single needs a 1-device process)
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from _sharding_common import print_json  # noqa: E402

from jaxlm.train import config as C  # noqa: E402
from jaxlm.train.hooks import Hook  # noqa: E402
from jaxlm.train.loop import train  # noqa: E402
from tests.train.conftest import write_corpus  # noqa: E402

MESH = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
INT8 = ["finetune.lora.quantize=int8"]  # QLoRA: the frozen base's matmul weights int8
LAYOUTS = {"single": ["mesh.data=1"], "data2_fsdp2_tensor2": MESH, "pmap8": ["mesh.data=8", "mesh.parallel=pmap"],
           "single_int8": ["mesh.data=1", *INT8], "data2_fsdp2_tensor2_int8": [*MESH, *INT8]}


def _specs(tree) -> dict:
    out = {}
    for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        spec = getattr(leaf.sharding, "spec", None)
        name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in kp)
        out[name] = None if spec is None else [a if a is None or isinstance(a, str) else list(a) for a in spec]
    return out


class Specs(Hook):
    """Records the PartitionSpec of every trained leaf and of the frozen base's leaves at the first step."""

    def on_start(self, loop) -> None:
        self.specs, self.frozen = _specs(loop.state.params), _specs(loop.state.frozen)


def main() -> None:
    tmp = Path(sys.argv[1])
    tmp.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(tmp / "corpus.txt")
    fast = ["train.log_every=1", "train.eval_every=0", "train.progress=false", "train.tensorboard=false",
            "train.plot=false", "train.dropout=false", "train.warmup_steps=0", "train.batch_size=16"]
    base = C.apply_overrides(C.RunConfig(model="llama-tiny", data=C.DataConfig(path=str(corpus), tokenizer="char",
                                                                            seq_len=16, eval_fraction=0.1)),
                             [*fast, "train.steps=4", "train.checkpoint_every=0", "mesh.data=-1", "model.dropout=0"])
    train(base, tmp / "base", quiet=True)
    out = {}
    for name in sys.argv[2].split(","):
        mesh = LAYOUTS[name]
        run = C.apply_overrides(base, [f"train.init_from={tmp / 'base'}", "train.steps=4", "train.lr=1e-2",
                                       "finetune.lora.rank=4", "finetune.lora.targets=layers/attn/(q|o),layers/mlp/wo",
                                       *mesh])
        hook = Specs()
        train(run, tmp / name, quiet=True, hooks=[hook])
        rows = [__import__("json").loads(x) for x in (tmp / name / "metrics.jsonl").read_text().splitlines()]
        out[name] = {"losses": [r["loss"] for r in rows if "loss" in r], "specs": hook.specs,
                     "frozen": hook.frozen}
    print_json(out)


if __name__ == "__main__":
    main()
