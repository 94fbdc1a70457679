"""jaxlm models as Flax NNX modules, and back.

jaxlm models are pure functions over a params dict; Flax NNX users hold state in ``nnx.Module`` objects.
:class:`Model` bridges the two without copying code: it stores the params tree as ``nnx.Param`` variables
(each carrying its logical axes as ``out_sharding`` metadata, e.g. ``("embed", "heads", "head_dim")``) and
its ``__call__`` is the family's ``apply``. :func:`unwrap` returns the plain params tree again.

    model = jaxlm.interop.flax.Model(gpt2, cfg, rngs=nnx.Rngs(0))     # or wrap(family, cfg, params)
    logits = model(tokens)                                            # == gpt2.apply(params, tokens, cfg)
    opt = nnx.Optimizer(model, optax.adamw(3e-4), wrt=nnx.Param)
    grads = nnx.grad(loss_fn)(model); opt.update(model, grads)
    params = unwrap(model)                                            # back to a jaxlm tree

A ``Model`` composes like any NNX module (an attribute of your own ``nnx.Module``, inside ``nnx.jit``).
Logical axes map to a device mesh with the jaxlm rules table: ``Model(..., mesh=mesh)`` places each
parameter with :func:`jaxlm.sharding.param_shardings`, and :meth:`Model.shardings` gives that tree.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import jax
from flax import nnx

from jaxlm import params as P
from jaxlm import sharding


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


class Model(nnx.Module):
    """A jaxlm model (``family`` module + ``cfg``) as an NNX module; parameters are ``nnx.Param``.

    ``params``: a jaxlm params tree (e.g. from :func:`jaxlm.pretrained.load`); when omitted, drawn with
    ``family.init`` from ``rngs.params()``. ``mesh`` (optional): place parameters sharded by the
    logical-axis ``rules`` (default :data:`jaxlm.sharding.RULES`).
    """

    def __init__(self, family: ModuleType, cfg, params: dict | None = None, *, rngs: nnx.Rngs | None = None,
                 mesh: jax.sharding.Mesh | None = None, rules=None):
        spec = family.spec(cfg)
        if params is None:
            if rngs is None:
                raise ValueError("Model needs either params or rngs (e.g. rngs=nnx.Rngs(0)) to initialise them.")
            params = P.init(rngs.params(), spec)
        P.check_params(params, spec, what=f"params for {family.__name__}")
        if mesh is not None:
            params = jax.device_put(params, sharding.param_shardings(spec, mesh, rules))
        axes = P.logical_axes(spec)
        # out_sharding holds logical names; eager_sharding=False keeps them as metadata (placement above uses
        # jaxlm's rules, so Flax's own logical-rules context is not needed).
        self.params = nnx.data(jax.tree.map(
            lambda a, ax: nnx.Param(a, out_sharding=tuple(ax), eager_sharding=False), params, axes,
            is_leaf=lambda x: isinstance(x, tuple)))
        self.family = family
        self.cfg = cfg

    def tree(self) -> dict:
        """The current parameters as a plain jaxlm params tree (same arrays, no copy)."""
        return jax.tree.map(lambda v: v.get_value(), self.params, is_leaf=_is_var)

    def __call__(self, *inputs: Any, **kw: Any) -> Any:
        """``family.apply(params, *inputs, cfg, **kw)``: e.g. ``model(tokens)`` -> logits [B, T, V] for GPT-2 /
        LLaMA, the output dict for BERT, ``model(src, tgt_in)`` for the encoder-decoder."""
        return self.family.apply(self.tree(), *inputs, self.cfg, **kw)

    def call(self, method: str, *inputs: Any, **kw: Any) -> Any:
        """Another function of the family with these params, e.g. ``model.call("encode", src)``."""
        return getattr(self.family, method)(self.tree(), *inputs, self.cfg, **kw)

    def logical_axes(self) -> dict:
        """Tree of logical axis names, read from the ``nnx.Param`` metadata."""
        return jax.tree.map(lambda v: v.get_metadata()["out_sharding"], self.params, is_leaf=_is_var)

    def shardings(self, mesh: jax.sharding.Mesh, rules=None) -> dict:
        """Tree of ``NamedSharding`` for these parameters on ``mesh`` under the jaxlm rules."""
        return sharding.param_shardings(self.family.spec(self.cfg), mesh, rules)


def wrap(family: ModuleType, cfg, params: dict, **kw: Any) -> Model:
    """A jaxlm ``(family, cfg, params)`` as an NNX :class:`Model`."""
    return Model(family, cfg, params, **kw)


def from_pretrained(path: str, **kw: Any) -> Model:
    """Load with :func:`jaxlm.pretrained.load` (run dir, Hugging Face dir/id, GGUF) and wrap."""
    from jaxlm import pretrained

    loaded = pretrained.load(path)
    return Model(loaded.family, loaded.config, loaded.params, **kw)


def unwrap(model: Model) -> dict:
    """The jaxlm params tree of an NNX :class:`Model` (for ``family.apply``, checkpoints, HF export)."""
    if not isinstance(model, Model):
        raise TypeError(f"unwrap expects a jaxlm.interop.flax.Model, got {type(model).__name__}.")
    return model.tree()
