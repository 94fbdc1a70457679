"""``TrainState``: everything that changes during training, as one pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxlm.models import family_of


@struct.dataclass
class TrainState:
    """params (nested dict: what the optimizer trains), opt_state (optax), step (int32 scalar: train-step
    calls so far), rng (uint32[2] raw key data: stored raw so Orbax saves it like any array; the key of step s
    is ``fold_in(wrap_key_data(rng), s)``, so no key has to be carried from step to step) and ``frozen``:
    weights the step reads but never updates (a LoRA run's base model, with ``params`` its adapters; None
    otherwise). ``frozen`` is not written to checkpoints: it is rebuilt from where it came from."""

    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array
    frozen: Any = None

    def key(self) -> jax.Array:
        """This step's PRNG key."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def raw_key(key: jax.Array | int) -> jax.Array:
    """A seed, a typed key or raw key data -> raw uint32 key data."""
    if isinstance(key, int):
        key = jax.random.key(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return jnp.asarray(key, jnp.uint32)


def create_state(key: jax.Array | int, model_cfg, optimizer: optax.GradientTransformation,
                 params: dict | None = None, frozen: dict | None = None) -> TrainState:
    """A fresh state: params drawn from ``key`` (or the given ``params``), the optimizer's initial state,
    step 0, a training rng derived from ``key`` independently of the parameter draw, and ``frozen``."""
    raw = raw_key(key)
    typed = jax.random.wrap_key_data(raw)
    if params is None:
        params = family_of(model_cfg).init(jax.random.fold_in(typed, 0), model_cfg)
    return TrainState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32),
                      rng=jax.random.key_data(jax.random.fold_in(typed, 1)), frozen=frozen)
