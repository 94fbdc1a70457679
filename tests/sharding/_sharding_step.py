"""The step the multi-device workers train: the project's own (``jaxlm.train``: the causal-LM / seq2seq
task, AdamW with its decay mask and global-norm clipping, ``TrainState``).

Under pmap (``grad_axis_name`` set) ``make_train_step`` divides this device's loss sum by the token count
summed over all devices and sums the gradients: exactly the global token mean the jit path takes, so the
losses match even though the devices hold different numbers of real (unpadded) tokens.
"""

from __future__ import annotations

from jaxlm.train import config as tconfig
from jaxlm.train import optim, tasks
from jaxlm.train import state as tstate
from jaxlm.train import step as tstep


def optimizer(cfg=None):
    # a large constant rate so 5 steps move the loss visibly; clipping stays on (it reads global norms)
    return optim.make_optimizer(tconfig.TrainConfig(lr=1e-2, schedule="constant", warmup_steps=0,
                                                    weight_decay=0.01, clip_norm=1.0), cfg)


def create_state(key, cfg, opt):
    return tstate.create_state(key, cfg, opt)


def make_step(cfg, opt, grad_axis_name=None):
    task = tasks.make_task("seq2seq" if type(cfg).family == "transformer" else "causal_lm")
    return tstep.make_train_step(task, cfg, opt, grad_axis_name=grad_axis_name)


def make_eval(cfg):
    task = tasks.make_task("seq2seq" if type(cfg).family == "transformer" else "causal_lm")
    return tstep.make_eval_step(task, cfg)


def params_of(state):
    return state.params
