"""Running one train step on many devices: a mesh from the mesh config, sharded state, sharded batches and
the compiled step.

Two modes, chosen by ``mesh.parallel``:

- ``"jit"`` (default): one :func:`jax.jit` over a ``(data, fsdp, tensor)`` mesh with explicit in/out
  shardings and the state donated. Parameters and optimizer moments are sharded by the logical-axis rules
  (:mod:`jaxlm.sharding`), the batch over ``("data", "fsdp")``, and activations are pinned at block
  boundaries because the step is traced inside :func:`jaxlm.sharding.use_mesh`. XLA inserts the
  collectives (all-gathers for FSDP, reduce-scatters of gradients, tensor-parallel all-reduces).
- ``"pmap"``: the classic data-parallel API. The same step function, built with
  ``grad_axis_name=GRAD_AXIS`` so it averages gradients with :func:`jax.lax.pmean`, runs under
  :func:`jax.pmap`; the state is replicated with a leading device axis (``flax.jax_utils.replicate``).

Typical use (what :mod:`jaxlm.train.loop` does)::

    par = Parallel(run.mesh, model_cfg=run.model, batch_size=run.train.batch_size)
    step = make_train_step(task, run.model, opt, grad_axis_name=par.grad_axis_name)
    state = par.init_state(create_state, key, run.model, opt)      # born sharded
    train = par.compile(step, state)
    for batch in batches:                                           # numpy [B, ...] per leaf
        state, metrics = train(state, par.place_batch(batch))
    plain = par.unreplicate(state)                                  # for checkpoints / eval

The package, bottom up (each module is one job, so each can be read and tested alone; :class:`Parallel`
only holds the run's mesh, mode, rules, spec and devices and passes them on):

- :mod:`~jaxlm.parallel.mesh`: the mesh from the mesh config, :func:`validate`, :data:`MODES`,
  :data:`GRAD_AXIS`;
- :mod:`~jaxlm.parallel.shardings`: :func:`tree_shardings` and the shardings of a whole state;
- :mod:`~jaxlm.parallel.placement`: the state born sharded, replicated for pmap and back, as a restore
  target;
- :mod:`~jaxlm.parallel.batches`: the rows each process loads and the batch on the mesh;
- :mod:`~jaxlm.parallel.steps`: the jit / pmap train step, its lowering, the evaluation step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
from jax.sharding import NamedSharding

from jaxlm import sharding
from jaxlm.models import family_of
from jaxlm.parallel import batches, placement, shardings, steps
from jaxlm.parallel.mesh import (
    GRAD_AXIS,
    MODES,
    describe_devices,
    field,
    local_devices,
    mesh_config_for,
    mesh_from_config,
    validate,
)
from jaxlm.parallel.shardings import _names, tree_shardings  # noqa: F401 (_names: read by tests)

log = logging.getLogger(__name__)


class Parallel:
    """Mesh, mode and shardings for one run; places state and batches and compiles the step.

    ``mesh_cfg``: a ``MeshConfig`` (``data``, ``fsdp``, ``tensor``, ``parallel``) or a dict, or None for
    pure data parallelism over every device. ``model_cfg`` gives the parameter spec the sharding rules
    read (and is checked against the mesh); ``batch_size`` (global) is checked too.
    """

    def __init__(self, mesh_cfg: Any = None, *, model_cfg: Any = None, spec: Mapping | None = None,
                 batch_size: int | None = None, devices=None, rules=None, mode: str | None = None,
                 seq_len: int | None = None):
        self.mode = mode or field(mesh_cfg, "parallel", "jit")
        self.rules = rules
        self.mesh = mesh_from_config(mesh_config_for(mesh_cfg, self.mode), devices)
        self.model_cfg = model_cfg
        if spec is None and model_cfg is not None:
            spec = family_of(model_cfg).spec(model_cfg)
        self.spec = spec
        validate(self.mesh, model_cfg=model_cfg, batch_size=batch_size, mode=self.mode, seq_len=seq_len)
        if self.mode == "pmap":
            self.devices = local_devices(self.mesh)

    # -- facts -------------------------------------------------------------------------------------------
    @property
    def grad_axis_name(self) -> str | None:
        """The axis name to build the step with: :data:`GRAD_AXIS` under pmap, None under jit."""
        return GRAD_AXIS if self.mode == "pmap" else None

    @property
    def data_parallel_size(self) -> int:
        """``mesh.data x mesh.fsdp``: how many ways the batch is split."""
        s = sharding.mesh_shape(self.mesh)
        return s["data"] * s["fsdp"]

    def report(self) -> str:
        """The per-parameter sharding table (:func:`jaxlm.sharding.sharding_report`)."""
        if self.spec is None:
            return f"mesh {dict(self.mesh.shape)}"
        if self.mode == "pmap":
            return f"pmap over {len(self.devices)} local devices: every parameter replicated on each"
        return sharding.sharding_report(self.spec, self.mesh, self.rules)

    def log_report(self) -> None:
        """Log the sharding table at start-up (INFO; the replication warning at WARNING)."""
        for line in self.report().splitlines():
            (log.warning if line.startswith("WARNING") else log.info)(line)

    # -- state -------------------------------------------------------------------------------------------
    def state_shardings(self, state: Any) -> Any:
        """NamedShardings for ``state`` (arrays or ShapeDtypeStructs) under jit; see :func:`tree_shardings`."""
        return shardings.state_shardings(state, self.spec, self.mesh, self.rules)

    def init_state(self, create_state: Callable[..., Any], key: jax.Array, *args: Any, **kwargs: Any) -> Any:
        """``create_state(key, *args, **kwargs)`` run under ``jax.jit(out_shardings=...)``: parameters and
        optimizer state are born on their devices (no whole copy on any host), with the same values as an
        unsharded call. Under pmap the result is replicated over the local devices."""
        fn = lambda k: create_state(k, *args, **kwargs)  # noqa: E731
        if self.mode == "pmap":
            return self.place_state(jax.jit(fn)(key))
        return placement.born_sharded(fn, key, self.spec, self.mesh, self.rules)

    def place_state(self, state: Any) -> Any:
        """Put an existing state (host arrays, a restored checkpoint, a state on another mesh) where this
        run wants it: sharded by the rules (jit) or replicated with a leading device axis (pmap)."""
        if self.mode == "pmap":
            return placement.replicate(state, self.devices)
        return jax.device_put(state, self.state_shardings(state))

    def unreplicate(self, state: Any) -> Any:
        """The state in the plain layout (for checkpoints, evaluation, generation): a no-op under jit; under
        pmap the first replica, as global arrays replicated over the mesh."""
        return state if self.mode != "pmap" else placement.unreplicate(state, self.mesh)

    def abstract_state(self, state_like: Any) -> Any:
        """``ShapeDtypeStruct`` tree with this run's shardings: the Orbax restore target that puts a
        checkpoint saved on any mesh straight onto this one."""
        return placement.abstract_state(state_like, self.spec, self.mesh, self.rules, self.mode)

    # -- batches -----------------------------------------------------------------------------------------
    def batch_sharding(self) -> NamedSharding:
        """Leading (batch) dimension over ``("data", "fsdp")``, everything else replicated."""
        return batches.batch_sharding(self.mesh)

    def local_rows(self, batch_size: int) -> slice:
        """The rows of each global batch of ``batch_size`` that this process loads (and only those);
        see :func:`jaxlm.parallel.batches.local_rows`."""
        return batches.local_rows(batch_size, self.mesh, self.mode)

    def place_batch(self, batch: Any, *, global_rows: int | None = None, for_eval: bool = False) -> Any:
        """Numpy batch (every leaf ``[rows, ...]``) -> device arrays laid out for the compiled step
        (:func:`jaxlm.parallel.batches.place_batch`; ``global_rows=B``: ``batch`` holds only this process's
        :meth:`local_rows` of a global batch of B). ``for_eval``: the jit layout even under pmap
        (evaluation runs on the unreplicated state)."""
        devices = self.devices if self.mode == "pmap" and not for_eval else None
        return batches.place_batch(batch, self.mesh, self.mode, global_rows=global_rows, devices=devices)

    # -- the step ----------------------------------------------------------------------------------------
    def compile(self, step: Callable, state: Any, *, donate: bool = True) -> Callable:
        """``step(state, batch) -> (state, metrics)`` compiled for this mesh.

        jit: ``jax.jit`` with ``in_shardings=(state, batch)``, ``out_shardings=(state, replicated)`` and
        the state donated; traced inside :func:`jaxlm.sharding.use_mesh` so the models' activation
        constraints apply. pmap: ``jax.pmap`` over the local devices with axis :data:`GRAD_AXIS` (the step
        must have been built with ``grad_axis_name=parallel.grad_axis_name``); metrics come back from the
        first replica. ``state`` is only read for its structure and shardings."""
        if self.mode == "pmap":
            return steps.compile_pmap(step, self.devices, donate=donate)
        return steps.compile_jit(step, self.state_shardings(state), self.batch_sharding(), self.mesh,
                                 self.rules, donate=donate)

    def lower(self, step: Callable, state: Any, batch: Any) -> Any:
        """The jit step of :meth:`compile` lowered for abstract ``state`` and ``batch`` (``ShapeDtypeStruct``
        trees): ``.compile()`` runs the compiler ahead of time (for any devices, e.g. a TPU slice's
        compile-only ones) and ``.compile().memory_analysis()`` gives the per-device bytes. jit mode only."""
        if self.mode != "jit":
            raise ValueError("lower() is for mesh.parallel=jit.")
        return steps.lower(self.compile(step, state).jitted, state, batch, self.mesh, self.rules)

    def compile_eval(self, eval_step: Callable, state: Any) -> Callable:
        """``eval_step(params_or_state, batch) -> metrics`` jitted on this mesh; batches come from
        ``place_batch(..., for_eval=True)``. pmap runs evaluate :meth:`unreplicate`'s state (replicated on
        the data-parallel mesh) with the jit layout."""
        sh = shardings.plain_shardings(state, self.spec, self.mesh, self.rules, self.mode)
        return steps.compile_eval(eval_step, sh, self.batch_sharding(), self.mesh, self.rules,
                                  constrain=self.mode == "jit")


__all__ = ["MODES", "GRAD_AXIS", "Parallel", "mesh_from_config", "validate", "tree_shardings",
           "describe_devices"]
