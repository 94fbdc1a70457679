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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlm import sharding
from jaxlm.config import ConfigError
from jaxlm.models import family_of
from jaxlm.nn import quant
from jaxlm.params import Param, flatten

log = logging.getLogger(__name__)

MODES = ("jit", "pmap")
GRAD_AXIS = "batch"  # the pmap axis the step's lax.pmean reduces over


# --- mesh and validation ------------------------------------------------------------------------------
def _field(cfg: Any, name: str, default: Any) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def mesh_from_config(mesh_cfg: Any = None, devices=None) -> Mesh:
    """The ``(data, fsdp, tensor)`` mesh a mesh config (``MeshConfig`` or a dict; None = all devices on
    ``data``) asks for. Raises ValueError naming the fix when the sizes do not match the device count."""
    if mesh_cfg is None:
        return sharding.make_mesh(-1, 1, 1, devices)
    return sharding.make_mesh(
        _field(mesh_cfg, "data", 1), _field(mesh_cfg, "fsdp", 1), _field(mesh_cfg, "tensor", 1), devices,
        context=_field(mesh_cfg, "context", 1),
    )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def validate(mesh: Mesh, *, model_cfg: Any = None, batch_size: int | None = None, mode: str = "jit",
             seq_len: int | None = None) -> None:
    """Check that ``model_cfg`` and the global ``batch_size`` fit ``mesh``; raise ConfigError naming the fix.

    - the batch must split evenly over the data-parallel size (``data x fsdp``; all devices under pmap)
      and over the processes (each loads its own rows);
    - ``mesh.tensor`` must divide ``n_heads`` (tensor parallelism splits attention by heads). Key/value
      heads that ``mesh.tensor`` does not divide (multi-query / grouped-query attention) are replicated,
      with a log line, as are other dimensions that do not divide their mesh axes;
    - pmap is data parallel only: ``mesh.fsdp``, ``mesh.tensor`` and ``mesh.context`` must be 1;
    - ``mesh.context`` must divide ``seq_len`` (each device holds ``seq_len / context`` tokens of every row).
    """
    if mode not in MODES:
        raise ConfigError(f"mesh.parallel={mode!r} is not one of {list(MODES)}.")
    shape = sharding.mesh_shape(mesh)
    if shape["context"] > 1:
        from jaxlm.nn import context as ctx

        if mode == "pmap":
            raise ConfigError(f"mesh.context={shape['context']} needs mesh.parallel=jit (pmap is data parallel "
                              f"only).")
        if seq_len is not None:
            ctx.check_divides(seq_len, shape["context"])
    if mode == "pmap" and (shape["fsdp"] > 1 or shape["tensor"] > 1):
        raise ConfigError(
            f"mesh.parallel='pmap' is data parallel only, but the mesh has fsdp={shape['fsdp']} and "
            f"tensor={shape['tensor']}: set mesh.fsdp=1 mesh.tensor=1 (and mesh.data=-1), or use "
            f"mesh.parallel=jit for FSDP / tensor parallelism."
        )
    if batch_size is not None:
        dp = shape["data"] * shape["fsdp"]
        if batch_size % dp:
            ok = dp * max(1, round(batch_size / dp))
            raise ConfigError(
                f"train.batch_size={batch_size} is not divisible by the data-parallel size "
                f"mesh.data x mesh.fsdp = {shape['data']} x {shape['fsdp']} = {dp}: use a multiple of {dp} "
                f"(e.g. train.batch_size={ok}) or change the mesh so data x fsdp divides {batch_size}."
            )
        if batch_size % jax.process_count():
            raise ConfigError(
                f"train.batch_size={batch_size} is not divisible by the {jax.process_count()} processes: "
                f"each process loads an equal share; use a multiple of {jax.process_count()}."
            )
    if model_cfg is not None and shape["tensor"] > 1:
        t, h = shape["tensor"], int(model_cfg.n_heads)
        if h % t:
            ok = [d for d in _divisors(h) if mesh.size % d == 0]
            raise ConfigError(
                f"mesh.tensor={t} does not divide model.n_heads={h}: tensor parallelism splits attention "
                f"by heads. Use mesh.tensor in {ok} (move the other devices to mesh.data or mesh.fsdp)."
            )
        g = int(getattr(model_cfg, "kv_heads", h))
        if g % t:
            log.warning("mesh.tensor=%d does not divide the %d key/value heads: k/v projections and the KV "
                        "cache are replicated over 'tensor' (usual for multi-query attention)", t, g)


# --- shardings of the whole train state ----------------------------------------------------------------
def _names(keypath) -> tuple:
    out = []
    for k in keypath:
        if isinstance(k, jax.tree_util.DictKey):
            out.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            out.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            out.append(k.idx)
        else:  # FlattenedIndexKey and friends
            out.append(str(k))
    return tuple(out)


def tree_shardings(tree: Any, spec: Mapping, mesh: Mesh, rules=None) -> Any:
    """NamedShardings for every leaf of ``tree`` (a TrainState, a params tree, an optimizer state...):
    a leaf whose key path ends with a parameter's path in ``spec`` and has that parameter's shape gets the
    parameter's sharding; every other leaf (step counters, RNG keys, scalars) is replicated.

    Matching path suffixes covers the params, Adam's ``mu``/``nu`` and any optax wrapper (masks,
    MultiSteps, chains) without knowing the optimizer, and works on ``ShapeDtypeStruct`` trees too. A
    quantized weight (:class:`jaxlm.nn.quant.QArray`, e.g. a QLoRA run's frozen base) gets a QArray of
    shardings: integers and scales sharded by the weight's axes (:func:`jaxlm.nn.quant.shardings`).
    """
    flat_spec: dict[str, Param] = flatten(spec)
    index = {tuple(k.split("/")): (p, NamedSharding(mesh, sharding.logical_to_pspec(p.axes, mesh, rules,
                                                                                       p.shape, what=k)))
             for k, p in flat_spec.items()}
    rep = sharding.replicated(mesh)
    longest = max((len(k) for k in index), default=0)

    def pick(keypath, leaf):
        names = _names(keypath)
        q = quant.is_quantized(leaf)  # a quantized weight: its integers and scales follow the weight's axes
        shape = tuple(leaf.shape if q else np.shape(leaf))
        for start in range(max(0, len(names) - longest), len(names)):
            hit = index.get(names[start:])
            if hit is not None and hit[0].shape == shape:
                return quant.shardings({"w": leaf}, {"w": hit[0]}, mesh, rules)["w"] if q else hit[1]
        return jax.tree.map(lambda _: rep, leaf) if q else rep

    return jax.tree_util.tree_map_with_path(pick, tree, is_leaf=quant.is_quantized)


def _unmatched_large(tree: Any, shardings: Any, mesh: Mesh) -> list[str]:
    """Paths of big leaves left replicated although the mesh could shard (a spec/params mismatch)."""
    out = []
    for (kp, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(shardings)):
        if mesh.size > 1 and np.size(leaf) >= 4096 and sh.spec == PartitionSpec():
            out.append(jax.tree_util.keystr(kp))
    return out


# --- the front door -----------------------------------------------------------------------------------
class Parallel:
    """Mesh, mode and shardings for one run; places state and batches and compiles the step.

    ``mesh_cfg``: a ``MeshConfig`` (``data``, ``fsdp``, ``tensor``, ``parallel``) or a dict, or None for
    pure data parallelism over every device. ``model_cfg`` gives the parameter spec the sharding rules
    read (and is checked against the mesh); ``batch_size`` (global) is checked too.
    """

    def __init__(self, mesh_cfg: Any = None, *, model_cfg: Any = None, spec: Mapping | None = None,
                 batch_size: int | None = None, devices=None, rules=None, mode: str | None = None,
                 seq_len: int | None = None):
        self.mode = mode or _field(mesh_cfg, "parallel", "jit")
        self.rules = rules
        if self.mode == "pmap" and mesh_cfg is not None and _field(mesh_cfg, "data", 1) == 1 and (
                _field(mesh_cfg, "fsdp", 1) == 1 and _field(mesh_cfg, "tensor", 1) == 1
            and _field(mesh_cfg, "context", 1) == 1):
            mesh_cfg = {"data": -1}  # pmap over every device unless told otherwise
        self.mesh = mesh_from_config(mesh_cfg, devices)
        self.model_cfg = model_cfg
        if spec is None and model_cfg is not None:
            spec = family_of(model_cfg).spec(model_cfg)
        self.spec = spec
        validate(self.mesh, model_cfg=model_cfg, batch_size=batch_size, mode=self.mode, seq_len=seq_len)
        if self.mode == "pmap":
            # pmap maps over this process's devices; processes run side by side (multi-host pmap).
            self.devices = [d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]

    # -- facts -------------------------------------------------------------------------------------------
    @property
    def grad_axis_name(self) -> str | None:
        """The axis name to build the step with: :data:`GRAD_AXIS` under pmap, None under jit."""
        return GRAD_AXIS if self.mode == "pmap" else None

    @property
    def data_parallel_size(self) -> int:
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
        text = self.report()
        for line in text.splitlines():
            (log.warning if line.startswith("WARNING") else log.info)(line)

    # -- state -------------------------------------------------------------------------------------------
    def state_shardings(self, state: Any) -> Any:
        """NamedShardings for ``state`` (arrays or ShapeDtypeStructs) under jit; see :func:`tree_shardings`."""
        if self.spec is None:
            return jax.tree.map(lambda _: sharding.replicated(self.mesh), state)
        shardings = tree_shardings(state, self.spec, self.mesh, self.rules)
        missed = _unmatched_large(state, shardings, self.mesh)
        if missed and any(s > 1 for s in (self.mesh.shape["fsdp"], self.mesh.shape["tensor"])):
            log.warning("%d large state leaves match no parameter of the spec and stay replicated, e.g. %s",
                        len(missed), missed[:3])
        return shardings

    def init_state(self, create_state: Callable[..., Any], key: jax.Array, *args: Any, **kwargs: Any) -> Any:
        """``create_state(key, *args, **kwargs)`` run under ``jax.jit(out_shardings=...)``: parameters and
        optimizer state are born on their devices (no whole copy on any host), with the same values as an
        unsharded call. Under pmap the result is replicated over the local devices."""
        fn = lambda k: create_state(k, *args, **kwargs)  # noqa: E731
        if self.mode == "pmap":
            return self.place_state(jax.jit(fn)(key))
        shapes = jax.eval_shape(fn, key)
        out = self.state_shardings(shapes)
        return jax.jit(fn, out_shardings=out)(key)

    def place_state(self, state: Any) -> Any:
        """Put an existing state (host arrays, a restored checkpoint, a state on another mesh) where this
        run wants it: sharded by the rules (jit) or replicated with a leading device axis (pmap)."""
        if self.mode == "pmap":
            from flax import jax_utils

            # axis name = the pmap axis, so the replicated state has the sharding pmap returns (no recompile)
            return jax_utils.replicate(state, devices=self.devices, axis_name=GRAD_AXIS)
        return jax.device_put(state, self.state_shardings(state))

    def unreplicate(self, state: Any) -> Any:
        """The state in the plain layout (for checkpoints, evaluation, generation): a no-op under jit; under
        pmap the first replica, as global arrays replicated over the mesh."""
        if self.mode != "pmap":
            return state
        from flax import jax_utils

        plain = jax_utils.unreplicate(state)
        rep = sharding.replicated(self.mesh)
        if jax.process_count() == 1:  # replicated on the mesh, where evaluation's jit expects it
            return jax.device_put(plain, rep)
        # multi-host: the first replica is host-local; Orbax and jit need global (replicated) arrays

        def to_global(x):
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                data = jax.make_array_from_process_local_data(rep, np.asarray(jax.random.key_data(x)))
                return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
            return jax.make_array_from_process_local_data(rep, np.asarray(x))

        return jax.tree.map(to_global, plain)

    def abstract_state(self, state_like: Any) -> Any:
        """``ShapeDtypeStruct`` tree with this run's shardings: the Orbax restore target that puts a
        checkpoint saved on any mesh straight onto this one."""
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), state_like)
        shardings = self.state_shardings(shapes) if self.mode == "jit" else jax.tree.map(
            lambda _: sharding.replicated(self.mesh), shapes)
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)

    # -- batches -----------------------------------------------------------------------------------------
    def batch_sharding(self) -> NamedSharding:
        """Leading (batch) dimension over ``("data", "fsdp")``, everything else replicated."""
        return NamedSharding(self.mesh, sharding.logical_to_pspec(("batch",), self.mesh))

    def local_rows(self, batch_size: int) -> slice:
        """The rows of each global batch of ``batch_size`` that this process loads (and only those).

        Under jit this is the union of the rows its devices hold (a contiguous block, since the mesh lays
        processes out along ``data``); under pmap, an equal share per process."""
        if self.mode == "pmap" or jax.process_count() == 1:
            n = batch_size // jax.process_count()
            return slice(jax.process_index() * n, (jax.process_index() + 1) * n)
        idx = self.batch_sharding().addressable_devices_indices_map((batch_size,))
        starts = [s[0].start or 0 for s in idx.values()]
        stops = [batch_size if s[0].stop is None else s[0].stop for s in idx.values()]
        lo, hi = min(starts), max(stops)
        rows = sorted({r for s in idx.values() for r in range(*s[0].indices(batch_size))})
        if rows != list(range(lo, hi)):
            raise ValueError("this process's devices hold non-contiguous batch rows; build the mesh with "
                             "jaxlm.sharding.make_mesh (processes laid out along 'data').")
        return slice(lo, hi)

    def place_batch(self, batch: Any, *, global_rows: int | None = None, for_eval: bool = False) -> Any:
        """Numpy batch (every leaf ``[rows, ...]``) -> device arrays laid out for the compiled step.

        ``global_rows=None``: ``batch`` is the whole global batch (single-process runs, tests); each process
        keeps only its :meth:`local_rows`. ``global_rows=B``: ``batch`` holds only this process's rows
        ``local_rows(B)`` of a global batch of B (the multi-host data path: no host loads the rest) and
        the global array is assembled with :func:`jax.make_array_from_process_local_data`.
        ``for_eval``: the jit layout even under pmap (evaluation runs on the unreplicated state).
        """
        leaves = jax.tree.leaves(batch)
        if not leaves:
            return batch
        rows = np.shape(leaves[0])[0]
        total = rows if global_rows is None else int(global_rows)
        mine = self.local_rows(total)
        if global_rows is not None and rows != mine.stop - mine.start:
            raise ValueError(f"this process should load rows {mine.start}:{mine.stop} of each batch of "
                             f"{total} ({mine.stop - mine.start} rows) but got {rows}; use local_rows().")
        take = (lambda x: np.asarray(x)[mine]) if global_rows is None else np.asarray
        if self.mode == "pmap" and not for_eval:
            n = len(self.devices)
            validate(self.mesh, batch_size=total)
            return jax.tree.map(lambda x: np.reshape(take(x), (n, -1, *np.shape(x)[1:])), batch)
        validate(self.mesh, batch_size=total)
        sh = self.batch_sharding()
        if jax.process_count() == 1:
            return jax.device_put(jax.tree.map(take, batch), sh)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(sh, take(x), (total, *np.shape(x)[1:])), batch)

    # -- the step ----------------------------------------------------------------------------------------
    def compile(self, step: Callable, state: Any, *, donate: bool = True) -> Callable:
        """``step(state, batch) -> (state, metrics)`` compiled for this mesh.

        jit: ``jax.jit`` with ``in_shardings=(state, batch)``, ``out_shardings=(state, replicated)`` and
        the state donated; traced inside :func:`jaxlm.sharding.use_mesh` so the models' activation
        constraints apply. pmap: ``jax.pmap`` over the local devices with axis :data:`GRAD_AXIS` (the step
        must have been built with ``grad_axis_name=parallel.grad_axis_name``); metrics come back from the
        first replica. ``state`` is only read for its structure and shardings."""
        if self.mode == "pmap":
            # every process maps over its own devices; the axis (and lax.pmean) spans all processes
            devices = None if jax.process_count() > 1 else self.devices
            mapped = jax.pmap(step, axis_name=GRAD_AXIS, devices=devices,
                              donate_argnums=(0,) if donate else ())

            def run_pmap(state, batch):
                state, metrics = mapped(state, batch)
                return state, jax.tree.map(lambda m: m[0], metrics)

            return run_pmap
        state_sh = self.state_shardings(state)
        jitted = jax.jit(step, in_shardings=(state_sh, self.batch_sharding()),
                         out_shardings=(state_sh, sharding.replicated(self.mesh)),
                         donate_argnums=(0,) if donate else ())
        mesh, rules = self.mesh, self.rules

        def run_jit(state, batch):
            with sharding.use_mesh(mesh, rules):
                return jitted(state, batch)

        run_jit.jitted = jitted  # for .lower() / cost analysis
        return run_jit

    def lower(self, step: Callable, state: Any, batch: Any) -> Any:
        """The jit step of :meth:`compile` lowered for abstract ``state`` and ``batch`` (``ShapeDtypeStruct``
        trees): ``.compile()`` runs the compiler ahead of time (for any devices, e.g. a TPU slice's
        compile-only ones) and ``.compile().memory_analysis()`` gives the per-device bytes. jit mode only."""
        if self.mode != "jit":
            raise ValueError("lower() is for mesh.parallel=jit.")
        jitted = self.compile(step, state).jitted
        with sharding.use_mesh(self.mesh, self.rules):
            return jitted.lower(state, batch)

    def compile_eval(self, eval_step: Callable, state: Any) -> Callable:
        """``eval_step(params_or_state, batch) -> metrics`` jitted on this mesh; batches come from
        ``place_batch(..., for_eval=True)``. pmap runs evaluate :meth:`unreplicate`'s state (replicated on
        the data-parallel mesh) with the jit layout."""
        if self.mode == "jit":
            sh = self.state_shardings(state)
        else:  # pmap runs evaluate the unreplicated state, replicated on the (n, 1, 1) mesh
            sh = jax.tree.map(lambda _: sharding.replicated(self.mesh), state)
        jitted = jax.jit(eval_step, in_shardings=(sh, self.batch_sharding()),
                         out_shardings=sharding.replicated(self.mesh))
        mesh, rules = self.mesh, self.rules

        def run(state, batch):
            with sharding.use_mesh(mesh if self.mode == "jit" else None, rules):
                return jitted(state, batch)

        return run


def describe_devices() -> str:
    """One line: processes, local/global devices and platform (for start-up logs)."""
    return (f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
            f"{jax.device_count()} {jax.devices()[0].platform} devices")


__all__ = ["MODES", "GRAD_AXIS", "Parallel", "mesh_from_config", "validate", "tree_shardings",
           "describe_devices"]
