"""Weights & Biases logging as a training hook (``train.wandb.project=NAME``; the optional ``wandb`` extra).

:class:`WandbLog` sends every metrics row the run writes to ``metrics.jsonl`` (train rows and ``eval_*``
rows, at their step) to a W&B run whose config is the resolved RunConfig (:func:`jaxlm.train.config.to_json`).
The W&B run id is created once and kept in ``RUN_DIR/wandb_id.txt``: a resumed run (same ``--run-dir``)
continues the same W&B run (``resume="allow"``) and logs from the step after its checkpoint. W&B writes its
files under ``RUN_DIR/wandb/``. TensorBoard stays the default log; this hook only adds W&B.
"""

from __future__ import annotations

import uuid

from jaxlm.fileio import write_text_atomic
from jaxlm.train import config as C
from jaxlm.train.hooks import Hook, Loop

ID_FILE = "wandb_id.txt"


class WandbLog(Hook):
    """Logs the run's metrics rows and resolved config to W&B (see the module docstring)."""

    def __init__(self, cfg: C.WandbConfig):
        self.cfg = cfg
        self.run = None

    def on_start(self, loop: Loop) -> None:
        try:
            import wandb
        except ImportError:
            raise ImportError("train.wandb.project is set but the wandb package is missing; pip install "
                              "'jaxlm[wandb]' (or leave train.wandb.project empty).") from None
        s = loop.setup
        f = s.run_dir / ID_FILE
        if f.is_file() and f.read_text().strip():
            run_id = f.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            write_text_atomic(f, run_id + "\n")
        c = self.cfg
        self.run = wandb.init(project=c.project, entity=c.entity or None, name=c.name or s.run_dir.name,
                              id=run_id, resume="allow", dir=str(s.run_dir), config=C.to_json(s.run),
                              mode=c.mode or None, reinit="finish_previous")

    def on_log(self, loop: Loop, row: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))

    def on_end(self, loop: Loop) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if loop.finished else 1)
            self.run = None
