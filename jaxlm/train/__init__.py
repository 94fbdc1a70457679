"""Training: configs, state, optimizers, tasks, the pure step, the loop and Orbax checkpoints.

Heavy pieces are imported on use: ``from jaxlm.train import loop, checkpoint`` (the loop is ``setup`` +
``hooks`` + ``logs``).
"""

from jaxlm.train.config import DataConfig, MeshConfig, RunConfig, TrainConfig
from jaxlm.train.state import TrainState, create_state
from jaxlm.train.step import make_eval_step, make_train_step

__all__ = ["DataConfig", "MeshConfig", "RunConfig", "TrainConfig", "TrainState", "create_state",
           "make_eval_step", "make_train_step"]
