"""Will it fit, and how fast will it go? Per-device memory and step time of a run on a TPU slice, from any
machine.

:func:`plan` builds the train step ``jaxlm train`` would run for a :class:`~jaxlm.train.config.RunConfig`
(same task, optimizer, dtypes, remat policy, mesh and shardings: :func:`jaxlm.train.setup.build`) and
either

- **compiles** it ahead of time for a topology (``jax.jit(step).lower(abstract state, abstract batch)
  .compile()`` on the devices of :func:`jax.experimental.topologies.get_topology_desc`: the real TPU
  compiler, run on this CPU by the ``libtpu`` package; nothing is allocated) and reads XLA's
  ``memory_analysis()``, or
- **estimates** it analytically (:func:`estimate`): the state's bytes exactly from the parameter spec and
  the shardings, activations from a per-remat-policy count of the tensors the backward pass keeps.

The compiled ``cpu:N`` path (N simulated CPU devices) runs the same code with XLA's CPU compiler, which is
how the tests check the analytic estimate.

FLOPs come from the model (:func:`jaxlm.metrics.flops_per_token`: 6 N + 12 L T D per token, plus the
forward pass recomputed by rematerialisation), not from ``cost_analysis()``, which counts a scanned layer
once. Step time and tokens/s are ESTIMATES at an assumed hardware-FLOPs utilisation, not measurements.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import importlib.util
import itertools
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import metrics as M
from jaxlm import params as P
from jaxlm import sharding
from jaxlm.config import ConfigError
from jaxlm.models import family_of
from jaxlm.nn import attention, ffn, stack
from jaxlm.nn import flash as flash_lib
from jaxlm.train import config as C

GiB = 2**30


# --- chips ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chip:
    """One accelerator generation: HBM per chip, peak dense bf16 FLOP/s per chip, and how its slice names
    count (TensorCores for v4/v5p, which have two per chip; chips for v5e/v6e)."""

    name: str
    hbm_bytes: int
    peak_flops: float
    cores_per_chip: int  # the number in a slice name ("v5p-128") counts cores: chips = n / cores_per_chip
    dims: int  # topology dimensions (2-D torus for v5e/v6e, 3-D for v4/v5p)
    source: str


# HBM per chip and peak bf16 FLOP/s per chip, from Google Cloud's TPU system-architecture pages
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, 2, 3, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, 1, 2, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, 2, 3, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6e (Trillium)", 32 * GiB, 918e12, 1, 2, "https://cloud.google.com/tpu/docs/v6e"),
}
LIBTPU_FIX = ('install the TPU compiler with `pip install "jax[tpu]"` (libtpu, the version your jax pins; '
              "~200 MB, no TPU needed) or pass --analytic for the analytic estimate")


@dataclass(frozen=True)
class Topology:
    """A slice: generation (``"v5e"`` ... or ``"cpu"``), chip count and the topology string the TPU
    compiler takes (``"v5e:4x4"``)."""

    kind: str
    chips: int
    shape: tuple[int, ...]
    name: str  # as the user wrote it

    @property
    def chip(self) -> Chip | None:
        return CHIPS.get(self.kind)

    @property
    def tpu_name(self) -> str:
        return f"{self.kind}:{'x'.join(map(str, self.shape))}"

    @property
    def hbm_bytes(self) -> int:
        if self.chip is not None:
            return self.chip.hbm_bytes
        return _host_memory() // max(self.chips, 1)  # cpu:N: the host's memory shared by N devices

    @property
    def peak_flops(self) -> float:
        return self.chip.peak_flops if self.chip is not None else M.PEAK_FLOPS["cpu"]


def _host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * GiB


def _grid(chips: int, dims: int) -> tuple[int, ...]:
    """A near-square (2-D) or near-cubic (3-D) power-of-two-ish grid with ``chips`` chips, as Google names
    slices (v5e-16 = 4x4, v5p-128 = 4x4x4, v4-32 = 2x2x4)."""
    if dims == 2:
        a = 2 ** (int(math.log2(chips)) // 2) if chips & (chips - 1) == 0 else 1
        while chips % a:
            a //= 2
        return (a, chips // a) if chips > 1 else (1, 1)
    shape = [1, 1, 1]
    n, i = chips, 0
    while n > 1 and n % 2 == 0:
        shape[i % 3] *= 2
        n //= 2
        i += 1
    shape[2] *= n
    return tuple(sorted(shape))


KNOWN = ("v5e-16", "v5e:4x4", "v5e-256", "v5p-128", "v5p:4x4x4", "v4-32", "v6e-64", "cpu:8")


def parse_topology(name: str) -> Topology:
    """``v5e-16`` (slice name: chips for v5e/v6e, TensorCores for v4/v5p), ``v5e:4x4`` (chip grid) or
    ``cpu:N`` (N simulated CPU devices). Raises ConfigError listing the known forms."""
    s = name.strip().lower()
    known = (f"known generations: {', '.join(CHIPS)} (+ cpu); forms: GEN-N (slice name, e.g. v5e-16, "
             f"v5p-128 = 64 chips of 2 cores), GEN:AxB[xC] (chip grid, e.g. v5e:4x4) or cpu:N; examples: "
             f"{', '.join(KNOWN)}")
    m = re.fullmatch(r"cpu(?::(\d+))?", s)
    if m:
        n = int(m.group(1) or 8)
        return Topology("cpu", n, (n,), name)
    m = re.fullmatch(r"(v\d+[a-z]?)(?:-(\d+)|:(\d+(?:x\d+)*))", s)
    if not m or m.group(1) not in CHIPS:
        raise ConfigError(f"unknown topology {name!r}; {known}.")
    chip = CHIPS[m.group(1)]
    if m.group(2):
        n = int(m.group(2))
        if n % chip.cores_per_chip or n < chip.cores_per_chip:
            raise ConfigError(f"topology {name!r}: {m.group(1)} slice names count TensorCores ({chip.cores_per_chip} "
                              f"per chip), so the number must be a multiple of {chip.cores_per_chip}; {known}.")
        chips = n // chip.cores_per_chip
        shape = _grid(chips, chip.dims)
    else:
        shape = tuple(int(x) for x in m.group(3).split("x"))
        if len(shape) != chip.dims:
            raise ConfigError(f"topology {name!r}: {m.group(1)} grids have {chip.dims} dimensions "
                              f"(e.g. {m.group(1)}:{'x'.join(['2'] * chip.dims)}); {known}.")
        chips = math.prod(shape)
    return Topology(m.group(1), chips, shape, name)


def has_libtpu() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def devices(topo: Topology) -> list:
    """The devices of ``topo``: compile-only TPU devices (needs libtpu; nothing is allocated) or this
    process's CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``)."""
    if topo.kind == "cpu":
        devs = jax.devices("cpu")
        if len(devs) < topo.chips:
            raise ConfigError(f"topology cpu:{topo.chips} needs {topo.chips} CPU devices but this process has "
                              f"{len(devs)}: set XLA_FLAGS=--xla_force_host_platform_device_count={topo.chips} "
                              f"before jax starts (`jaxlm plan` does so when it starts jax itself).")
        return devs[:topo.chips]
    if not has_libtpu():
        raise ConfigError(f"topology {topo.name} needs the TPU compiler, which is not installed: {LIBTPU_FIX}.")
    from jax.experimental import topologies

    if not glob.glob("/dev/accel*") and not glob.glob("/dev/vfio/[0-9]*"):
        # no TPU attached: libtpu only compiles here, so two planners may load it at once (its lockfile
        # otherwise refuses the second process)
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topo.tpu_name)
    except Exception as e:  # noqa: BLE001 - libtpu's errors are RuntimeErrors of its own types
        if "lockfile" in str(e):
            raise ConfigError("libtpu is in use by another process on this machine (/tmp/libtpu_lockfile): "
                              "plan when it has finished, or use --analytic.") from None
        raise ConfigError(f"the TPU compiler does not know topology {topo.tpu_name} ({topo.name}): "
                          f"{str(e).splitlines()[0][:200]}; try a standard slice such as {', '.join(KNOWN[:4])}.") \
            from None
    return list(desc.devices)


# --- the run as it would train ------------------------------------------------------------------------
def _run_for(run: C.RunConfig, topo: Topology) -> C.RunConfig:
    """``run`` resolved, with a ``-1`` mesh size filled from the topology and the product checked."""
    if run.finetune.lora.enabled:  # its state and gradients cover the adapters only: a different step
        raise ConfigError("jaxlm plan models full training; a finetune.lora run (adapters over a frozen base) is "
                          "not planned yet. Drop the finetune.lora.* settings for an upper bound (full "
                          "fine-tuning needs more memory than LoRA).")
    run = C.resolve(run)
    # "auto" remat is the policy for the platform planned for (nn/stack.py), named so the plan shows it
    on = "cpu" if topo.kind == "cpu" else "tpu"
    run = run.replace(model=run.model.replace(remat=stack.resolve_remat(run.model.remat, on)))
    m = run.mesh
    sizes = {a: getattr(m, a) for a in mesh_axes(m)}
    free = [a for a, v in sizes.items() if v == -1]
    fixed = math.prod(v for v in sizes.values() if v != -1)
    shown = " x ".join(f"{a}={v}" for a, v in sizes.items() if a != "context" or v != 1)
    if len(free) > 1:
        raise ConfigError(f"mesh {shown}: at most one mesh size may be -1.")
    if free:
        if topo.chips % fixed:
            raise ConfigError(f"mesh {shown} cannot fill the {topo.chips} devices of {topo.name}: {topo.chips} is "
                              f"not divisible by {fixed}; choose sizes whose product divides {topo.chips}.")
        sizes[free[0]] = topo.chips // fixed
    elif fixed != topo.chips:
        raise ConfigError(f"mesh {shown} = {fixed} devices, but {topo.name} has {topo.chips}: choose sizes whose "
                          f"product is {topo.chips} (or set one of them to -1 to fill the rest).")
    if sizes["context"] > 1:
        from jaxlm.nn import context as ctx

        ctx.check_divides(run.data.seq_len, sizes["context"])
    if m.parallel != "jit":
        raise ConfigError("jaxlm plan compiles the jit step (mesh.parallel=jit); a pmap run holds a full replica "
                          "per device, i.e. the plan of mesh.data=N with mesh.fsdp=1 mesh.tensor=1.")
    return run.replace(mesh=dataclasses.replace(m, **sizes))


def mesh_axes(mesh_cfg) -> tuple[str, ...]:
    """The mesh config's size fields (data, fsdp, context, tensor)."""
    return sharding.MESH_AXES


def seq_lens(run: C.RunConfig) -> tuple[int, int | None]:
    d = run.data
    return d.seq_len, (d.target_len or d.seq_len) if run.train.task == "seq2seq" else None


def abstract_batch(run: C.RunConfig) -> dict:
    """``ShapeDtypeStruct`` s of one micro-batch as :mod:`jaxlm.data` feeds the task (packed rows carry
    ``segment_ids`` and ``positions``; see :func:`jaxlm.data.packing.pack`)."""
    B = run.train.batch_size // run.train.grad_accum
    T, U = seq_lens(run)
    i32, f32 = jnp.int32, jnp.float32
    s = lambda *shape, dt=i32: jax.ShapeDtypeStruct(shape, dt)  # noqa: E731
    task = run.train.task
    if task == "causal_lm":
        return {"inputs": s(B, T), "targets": s(B, T), "weights": s(B, T, dt=f32), "segment_ids": s(B, T),
                "positions": s(B, T)}
    if task == "mlm":
        return {"tokens": s(B, T), "maskable": s(B, T, dt=jnp.bool_), "segment_ids": s(B, T),
                "positions": s(B, T)}
    if task == "seq2seq":
        return {"src": s(B, T), "src_valid": s(B, T), "tgt_in": s(B, U), "tgt_out": s(B, U), "tgt_valid": s(B, U),
                "weights": s(B, U, dt=f32)}
    if task == "classification":
        return {"tokens": s(B, T), "valid": s(B, T), "labels": s(B)}
    return {"tokens": s(B, T), "valid": s(B, T), "start": s(B), "end": s(B)}  # span


def _task(run: C.RunConfig):
    from jaxlm.train.tasks import make_task

    t = run.train
    opts = {"label_smoothing": t.label_smoothing, "z_loss": t.z_loss, "dropout": t.dropout, "mlm_prob": t.mlm_prob}
    if t.task == "mlm":  # the ids only matter for values, not shapes
        opts |= {"mask_id": run.model.vocab_size - 1, "random_high": run.model.vocab_size}
    return make_task(t.task, **opts)


# --- the result ----------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Per-device bytes of one configuration on one topology, and the step-time estimate.

    ``source``: ``"compiled"`` (XLA's memory analysis of the real step) or ``"analytic"``."""

    run: C.RunConfig
    topology: Topology
    source: str
    params: int  # parameter bytes per device
    opt_state: int  # optimizer-state bytes per device (moments, accumulated gradients, counters)
    temporaries: int  # gradients, activations, gathered weights... (compiled: XLA's temp buffers)
    other: int  # batch, step counter, RNG, metrics
    flops_per_step: float  # model FLOPs (6 N + 12 L T D per token), global
    hardware_flops_per_step: float  # + the forward recomputed by rematerialisation
    utilisation: float  # assumed hardware-FLOPs utilisation of the estimate
    analytic: dict = field(default_factory=dict)  # the analytic breakdown (also for compiled plans)
    compile_seconds: float | None = None
    error: str = ""  # a compile that failed (e.g. the TPU compiler's own out-of-memory)

    @property
    def total(self) -> int:
        return self.params + self.opt_state + self.temporaries + self.other

    @property
    def capacity(self) -> int:
        return self.topology.hbm_bytes

    @property
    def fits(self) -> bool:
        return not self.error and self.total <= self.capacity

    @property
    def tokens_per_step(self) -> int:
        return self.run.train.batch_size * seq_lens(self.run)[0]

    @property
    def step_seconds(self) -> float:
        """ESTIMATE: hardware FLOPs / (chips x peak x utilisation)."""
        t = self.topology
        return self.hardware_flops_per_step / (t.chips * t.peak_flops * self.utilisation)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.step_seconds

    @property
    def mfu(self) -> float:
        """Model-FLOPs utilisation implied by the assumed hardware utilisation (lower with remat)."""
        return self.utilisation * self.flops_per_step / self.hardware_flops_per_step

    def mesh_str(self) -> str:
        m = self.run.mesh
        return " ".join(f"{a}={getattr(m, a)}" for a in mesh_axes(m) if getattr(m, a) != 1) or "data=1"

    def summary(self) -> str:
        """The human-readable report ``jaxlm plan`` prints."""
        r, t = self.run, self.topology
        g = lambda b: f"{b / GiB:8.2f} GiB" if b >= GiB / 10 or b == 0 else f"{b / 2**20:8.2f} MiB"  # noqa: E731
        chip = t.chip
        cap_src = f"{chip.name}, {chip.source}" if chip else "host memory / devices"
        lines = [
            f"{type(r.model).family} {P.count(family_of(r.model).spec(r.model)):,} parameters "
            f"({r.model.param_dtype} params, {r.model.dtype} compute, remat={r.model.remat}), "
            f"{r.train.optimizer}, batch {r.train.batch_size} x {seq_lens(r)[0]} tokens"
            + (f" in {r.train.grad_accum} micro-batches" if r.train.grad_accum > 1 else ""),
            f"topology {t.name}: {t.chips} {'devices' if t.kind == 'cpu' else 'chips'}, mesh {self.mesh_str()}",
            f"per device ({'XLA ' + ('TPU' if t.kind != 'cpu' else 'CPU') + ' compiler memory analysis' if self.source == 'compiled' else 'analytic estimate'}):",
            f"  parameters       {g(self.params)}",
            f"  optimizer state  {g(self.opt_state)}",
            f"  temporaries      {g(self.temporaries)}   (gradients, activations, gathered weights)",
            f"  batch and other  {g(self.other)}",
            f"  total            {g(self.total)}   of {g(self.capacity)} ({cap_src}): "
            + ("FITS" if self.fits else "DOES NOT FIT") + f" ({self.total / self.capacity:.0%})",
        ]
        if self.error:
            lines.append(f"  compile failed: {self.error}")
        if self.source == "compiled" and self.analytic:
            lines.append(f"  (analytic estimate: {self.analytic['total'] / GiB:.2f} GiB, "
                         f"{self.analytic['total'] / max(self.total, 1) - 1:+.0%} vs compiled)")
        lines += [
            f"FLOPs per step (model, 6N + 12LTD per token): {self.flops_per_step:.3e}; with remat recompute "
            f"{self.hardware_flops_per_step:.3e}",
            f"ESTIMATE, not a measurement: at an assumed {self.utilisation:.0%} hardware-FLOPs utilisation of "
            f"{t.peak_flops / 1e12:.3g} TFLOP/s per chip: {self.step_seconds * 1e3:,.1f} ms per step, "
            f"{self.tokens_per_second:,.0f} tokens/s ({self.tokens_per_second / t.chips:,.0f} per chip), "
            f"MFU {self.mfu:.0%}",
        ]
        return "\n".join(lines)

    def row(self) -> dict:
        return {"mesh": self.mesh_str(), "remat": self.run.model.remat, "grad_accum": self.run.train.grad_accum,
                "batch": self.run.train.batch_size, "total_gib": self.total / GiB, "fits": self.fits,
                "tokens_per_s": self.tokens_per_second, "source": self.source}


# --- FLOPs ---------------------------------------------------------------------------------------------
# extra forward FLOPs (as a fraction of the 2 N + 4 L T D forward) recomputed in the backward pass
RECOMPUTE = {"none": 0.0, "dots_no_batch": 0.1, "dots": 0.05, "full": 1.0}


def flops(run: C.RunConfig) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one optimizer step over the global batch."""
    cfg = run.model
    n = P.count(family_of(cfg).spec(cfg))
    T = seq_lens(run)[0]
    layers = cfg.n_layers + getattr(cfg, "dec_layers", 0)
    per_token = M.flops_per_token(n, layers, T, cfg.d_model)
    model = per_token * run.train.batch_size * T
    forward = model / 3.0
    return model, model + RECOMPUTE.get(cfg.remat, 0.0) * forward


# --- the analytic estimate -----------------------------------------------------------------------------
def _shard_bytes(shape, dtype, sh) -> int:
    local = sh.shard_shape(tuple(shape)) if sh is not None else tuple(shape)
    return int(math.prod(local)) * np.dtype(dtype).itemsize


def _abstract(run: C.RunConfig, devs: Sequence | None) -> tuple[Any, Any, Any]:
    """(Compiled of :func:`jaxlm.train.setup.build` on ``devs`` (None: no devices, analytic mode), abstract
    state with shardings, abstract batch with shardings). With ``devs=None`` the shardings live on an
    :class:`jax.sharding.AbstractMesh` of the same shape: shard shapes without any device."""
    from jaxlm.parallel import tree_shardings
    from jaxlm.train.setup import build
    from jaxlm.train.state import create_state

    task = _task(run)
    if devs is not None:
        c = build(task, run, devices=devs)
        opt, par = c.optimizer, c.par
    else:
        from jaxlm.train.optim import make_optimizer

        c, opt, par = None, make_optimizer(run.train, run.model), None
    shapes = jax.eval_shape(lambda k: create_state(k, run.model, opt), jax.random.key(0))
    if par is not None:
        state, bs = par.abstract_state(shapes), par.batch_sharding()
    else:
        ms = _mesh_sizes(run)
        mesh = jax.sharding.AbstractMesh(tuple(ms.values()), tuple(ms))
        sh = tree_shardings(shapes, family_of(run.model).spec(run.model), mesh)
        state = jax.tree.map(lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h), shapes, sh)
        bs = jax.sharding.NamedSharding(mesh, sharding.logical_to_pspec(("batch",), mesh))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bs) for k, v in abstract_batch(run).items()}
    return c, state, batch


def _mesh_sizes(run: C.RunConfig) -> dict[str, int]:
    return {a: int(getattr(run.mesh, a)) for a in mesh_axes(run.mesh)}


def activation_bytes(run: C.RunConfig, platform: str = "cpu") -> dict:
    """Per-device bytes of the activations the backward pass keeps, by remat policy, plus the working set
    of one layer's backward pass and of the loss. A count of tensors, not a measurement:

    per layer (b rows per device, T tokens, D model width, H/G query/key-value heads of K dims and F ffn
    width over ``tensor``, a = compute-dtype bytes):

    - ``none``: every residual: the norms' float32 upcasts of the residual stream (three [b, T, D]
      float32 each) and their outputs, q/k/v, float32 scores and probabilities [b, H, T, S], attention
      output, projections, the FFN's hidden activations, dropout masks, and the layer's weights cast to the
      compute dtype when it differs from the parameters' (``jax.ad_checkpoint`` lists these residuals);
    - ``dots``: matmul outputs only (q/k/v, the scores in the compute dtype and the queries laid out for
      them, the projections into the residual stream, two [b, T, F] FFN tensors);
    - ``dots_no_batch``: weight-matmul outputs only (q/k/v, projections, FFN; no [T, S] scores);
    - ``full``: the layer's input [b, T, D].

    An encoder-decoder's decoder layers (U target tokens) add a cross-attention sub-layer: a third norm,
    queries over U, keys/values over the T source tokens and [b, H, U, T] scores.

    ``platform`` ("cpu" or "tpu") is the compiler planned for: what JAX lists is adjusted by what that
    compiler was measured to keep (libtpu's buffer report; the per-layer slope and intercept of XLA:CPU's
    memory analysis; benchmarks/RESULTS.md "The recount" and "The CPU matrix within 15 %").
    """
    cfg, t = run.model, run.train
    ms = _mesh_sizes(run)
    dp = ms.get("data", 1) * ms.get("fsdp", 1)
    tp, cp = ms.get("tensor", 1), ms.get("context", 1)
    T = seq_lens(run)[0]
    U = seq_lens(run)[1] or 0
    b = max(1, (t.batch_size // t.grad_accum) // dp)
    a = np.dtype(cfg.dtype).itemsize
    D, H = cfg.d_model, cfg.n_heads
    G = cfg.n_kv_heads or H
    K = cfg.d_head or D // H
    F = cfg.d_ff
    V = cfg.vocab_size
    Ht = H // tp if H % tp == 0 else H
    Gt = G // tp if G % tp == 0 else G
    Ft = F // tp if F % tp == 0 else F
    Vt = V // tp if V % tp == 0 else V
    gated = cfg.activation in ffn.GATED
    nF = 3 if gated else 2
    drop = cfg.dropout > 0 and t.dropout
    attn_drop = cfg.attn_dropout > 0 and t.dropout
    remat = stack.resolve_remat(cfg.remat, platform)
    # attention that keeps no [T, S] tensor for the backward pass ("auto" resolved for the platform planned)
    flash = attention.resolve_impl(cfg.attn_impl, cfg.dtype, K, on=platform) in ("flash", "cudnn") and not attn_drop
    E, k = getattr(cfg, "n_experts", 0) or 0, getattr(cfg, "top_k", 1) or 1
    # the norms around each sub-layer: two per block, four with the post-norms of a family that sets them
    norms_per_sublayer = 2 if getattr(cfg, "post_norms", False) else 1
    fs = ms.get("fsdp", 1) * cp

    def block(Tq: int, S: int, cross_S: int = 0) -> dict:
        """One block's residuals by remat policy for Tq query tokens per device attending S keys (and, with
        ``cross_S``, a cross-attention sub-layer over cross_S keys), and its backward working set."""
        xd = b * Tq * D * a
        ffn = b * Tq * Ft * a
        attns = [S] + ([cross_S] if cross_S else [])
        # per attention: q and output over Tq, k/v over its keys; [T, S] tensors per element of [b, H, Tq, S]
        qkv = sum(b * Tq * Ht * K * a + 2 * b * s * Gt * K * a for s in attns)
        att_out = len(attns) * b * Tq * Ht * K * a
        tt_elems = 0 if flash else sum(b * Ht * Tq * s for s in attns)
        # scores + probs (f32) + probs in compute dtype (+ the dropout mask and dropped probabilities)
        tt = tt_elems * (4 + 4 + a + (1 + a if attn_drop else 0))
        # libtpu keeps fewer of them for the backward pass: the float32 and compute-dtype probabilities (and
        # the dropout mask); scores, masking and dropped probabilities are fused into their consumers
        # (benchmarks/RESULTS.md "The recount"); so does XLA:CPU without attention dropout (the float32 and
        # compute-dtype probabilities)
        kept_tt = tt
        if platform == "tpu":
            kept_tt = tt_elems * (4 + a + (1 if attn_drop else 0))
        elif platform == "cpu" and not attn_drop:
            kept_tt = tt_elems * (4 + a)
        # the residual stream around each norm: float32 upcasts (three per norm) and the compute-dtype output
        n_sub = len(attns) + 1
        stream = n_sub * norms_per_sublayer * (xd + 3 * b * Tq * D * 4)
        masks = n_sub * b * Tq * D if drop else 0  # one boolean residual-dropout mask per sub-layer
        ffn_k = ffn * (k if E else 1)  # routed experts: every token's hidden activations through k experts
        if E:  # router logits/probabilities [N, E] f32, the k sorted copies of the tokens and of their outputs
            masks += b * Tq * E * 4 * 2 + 2 * k * xd
        # the layer's weights cast to the compute dtype (kept for the backward matmuls; a no-op cast keeps
        # none), sharded like the parameters (the cast happens before the FSDP gather)
        casts = 0
        if np.dtype(cfg.dtype) != np.dtype(cfg.param_dtype):
            casts = (len(attns) * (D * (H + 2 * G) * K + H * K * D) + max(E, 1) * nF * D * F) * a // (fs * tp)
        if E and platform == "tpu" and fs > 1 and remat == "none" and t.grad_accum > 1:
            # the routed dispatch all-gathers a layer's experts over FSDP in the compute dtype (their hidden
            # dimension split over tensor); with several micro-batches and no remat libtpu hoists that
            # gather, the same in every micro-batch, out of the accumulation loop and keeps every layer's
            # gathered copy (its buffer report: [layers, E, D, F / tensor] per expert matrix; not with one
            # micro-batch or another policy, and not XLA:CPU)
            casts += E * nF * D * F * a // tp - (E * nF * D * F * a // (fs * tp) if casts else 0)
        # what the compilers keep beyond JAX's residual list: libtpu (its buffer report) six [b, T, F]
        # tensors of the FFN rather than its matmul inputs/outputs alone, and the queries before and after
        # RoPE; XLA:CPU the same six FFN tensors of a gated FFN (the per-layer slope of its memory analysis)
        extra = 0
        if platform == "tpu":
            extra = (6 - nF) * ffn_k + b * Tq * Ht * K * a
        elif platform == "cpu" and gated:
            extra = (6 - nF) * ffn_k
        ffn_dots = 2 * ffn_k  # FFN tensors kept under dots/dots_no_batch: two, gated or not
        residuals = stream + qkv + att_out + nF * ffn_k + masks  # all of them but the [T, S] ones
        kept = {
            "none": residuals + kept_tt + casts + extra,
            "dots": n_sub * xd + qkv + att_out + tt_elems * a + ffn_dots,
            "dots_no_batch": n_sub * xd + qkv + ffn_dots,
            "full": xd,
        }[remat]
        # the backward pass of one layer holds its recomputed (or kept) residuals and their gradients at once;
        # 1.15 x the no-remat residuals matches XLA's memory analysis where the recomputation materialises
        # them (libtpu; XLA:CPU with dropout, whose random bits are drawn again)
        work = 1.15 * (residuals + tt)
        if platform == "cpu":
            # XLA:CPU fuses the recomputed elementwise work into the matmuls that consume it unless dropout's
            # random bits have to be drawn again: without dropout a layer's backward holds only the residuals
            # the policy makes it recompute for the backward matmuls (all under full; none under dots, whose
            # kept matmul outputs it reuses; half under none); without attention dropout, of the [T, S]
            # tensors only the float32 gradients of the probabilities and of the scores
            recomputed = 1.0 if drop else {"none": 0.5, "dots": 0.0, "dots_no_batch": 0.0, "full": 1.0}[remat]
            work = 1.15 * (recomputed * residuals + (tt if attn_drop else tt_elems * 8))
        if E and platform == "cpu":
            # XLA:CPU's ragged_dot holds float32 [E, k*N, F] tensors, every expert over every routed row, where
            # the grouped matmul needs [k*N, F]: four in the backward without remat, six with the forward
            # recomputed (fitted: benchmarks/RESULTS.md "Mixture of experts, counted from the buffers")
            work += (4 if remat == "none" else 6) * E * k * b * Tq * Ft * 4
        # flash attention's backward holds one query block's float32 scores, probabilities and their two
        # gradients ([b, H, block_q, S] each) instead of the whole [T, S]
        if flash:
            work += sum(4 * b * Ht * min(flash_lib.BLOCK_Q, Tq) * s * 4 for s in attns)
        return {"kept": kept, "work": work}

    Tl = T // cp  # tokens per device along the sequence; keys: the whole sequence (ring attention streams
    # them, all-gather holds them)
    enc = block(Tl, T)
    blocks = [(cfg.n_layers, enc)]
    if U:  # encoder-decoder: decoder layers attend their own U tokens and the T source tokens
        blocks.append((getattr(cfg, "dec_layers", 0) or 0, block(U // cp, U, cross_S=T)))
    kept = sum(n * blk["kept"] for n, blk in blocks)
    one_layer = max(blk["work"] for _, blk in blocks)
    loss = 3 * b * max(Tl, U // cp if U else 0) * Vt * 4  # float32 logits, their softmax and gradient
    mask = b * Tl * T  # the boolean [B, 1, T, S] attention mask, a constant of the scan
    return {"kept": int(kept), "one_layer": int(one_layer), "loss": int(loss), "mask": int(mask)}


@functools.lru_cache(maxsize=512)
def _state_bytes(run: C.RunConfig) -> tuple[int, int, int]:
    """Per-device (parameter, optimizer-state, largest layer's parameter) bytes: exact, from the abstract
    state's shardings (a layer: one slice of a stacked ``layers`` tree, e.g. a decoder's block)."""
    _, state, _ = _abstract(run, None)
    p_bytes = sum(_shard_bytes(x.shape, x.dtype, x.sharding) for x in jax.tree.leaves(state.params))
    all_bytes = sum(_shard_bytes(x.shape, x.dtype, x.sharding) for x in jax.tree.leaves(state))
    # parameters stacked along the logical "layers" axis (nn/stack.spec), one layer's share of them, per
    # top-level tree (a decoder's "layers"; an encoder-decoder's "encoder" and "decoder")
    axes = P.flatten(P.logical_axes(family_of(run.model).spec(run.model)))
    stacks: dict[str, int] = {}
    for k, x in P.flatten(state.params).items():
        if axes[k][:1] == ("layers",):
            top = k.split("/")[0]
            stacks[top] = stacks.get(top, 0) + _shard_bytes(x.shape, x.dtype, x.sharding) // x.shape[0]
    layer = max(stacks.values(), default=0)
    return p_bytes, all_bytes - p_bytes, layer


def _batch_bytes(run: C.RunConfig) -> int:
    """Per-device bytes of one micro-batch: rows split over data x fsdp."""
    ms = _mesh_sizes(run)
    dp = ms["data"] * ms["fsdp"]
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize // dp for x in abstract_batch(run).values())


def estimate(run: C.RunConfig, topo: Topology, *, utilisation: float = 0.5) -> Plan:
    """The analytic :class:`Plan` of ``run`` on ``topo``: state bytes exact from the abstract state and its
    shardings on an abstract mesh (no device, no compile), gradients as one more copy of the parameters,
    activations by :func:`activation_bytes`."""
    run = _run_for(run, topo)
    # the state does not depend on remat, batch or how many micro-batches (only on whether there are several)
    t = run.train
    key = run.replace(model=run.model.replace(remat="none"), data=C.DataConfig(),
                      train=dataclasses.replace(t, batch_size=2, grad_accum=min(t.grad_accum, 2)))
    p_bytes, o_bytes, layer_bytes = _state_bytes(key)
    batch_bytes = _batch_bytes(run)
    acts = activation_bytes(run, "cpu" if topo.chip is None else "tpu")
    # one gradient per parameter, sharded like it (reduce-scattered); with several micro-batches, the
    # float32 accumulator beside the current micro-batch's gradient
    grads = p_bytes * (2 if t.grad_accum > 1 else 1)
    # FSDP / tensor parallelism: a layer's weights are gathered whole (per tensor shard) for its matmuls
    ms = _mesh_sizes(run)
    cfg = run.model
    fs = ms.get("fsdp", 1) * ms.get("context", 1)
    gathered = layer_bytes * fs if fs > 1 else 0  # one layer's weights, gathered
    if getattr(cfg, "n_experts", 0) and ms.get("data", 1) * fs > 1:
        # the MoE dispatch runs per shard of tokens: one layer's experts all-gathered in the compute dtype
        # (their hidden dimension stays split over tensor), in the forward and again in the backward
        n_mats = 3 if cfg.activation in ffn.GATED else 2
        one_layer = cfg.n_experts * n_mats * cfg.d_model * cfg.d_ff * np.dtype(cfg.dtype).itemsize
        gathered += 2 * one_layer / ms.get("tensor", 1)
    temps = grads + acts["kept"] + acts["one_layer"] + acts["loss"] + acts["mask"] + int(gathered)
    model_f, hw_f = flops(run)
    total = p_bytes + o_bytes + temps + batch_bytes
    return Plan(run=run, topology=topo, source="analytic", params=p_bytes, opt_state=o_bytes, temporaries=temps,
                other=batch_bytes, flops_per_step=model_f, hardware_flops_per_step=hw_f, utilisation=utilisation,
                analytic={"total": total, "gradients": grads, "gathered_weights": int(gathered), **acts})


def compile_plan(run: C.RunConfig, topo: Topology, *, utilisation: float = 0.5) -> Plan:
    """Compile the train step of ``run`` for ``topo`` ahead of time and read XLA's memory analysis (per
    device). A compile that fails for lack of memory is a Plan that does not fit, with the error."""
    import time

    run = _run_for(run, topo)
    devs = devices(topo)
    c, state, batch = _abstract(run, devs)
    base = estimate(run, topo, utilisation=utilisation)
    t0 = time.perf_counter()
    error = ""
    try:
        lowered = c.par.lower(c.step_fn, state, batch)
        mem = lowered.compile().memory_analysis()
    except Exception as e:  # noqa: BLE001 - the TPU compiler reports out-of-memory as XlaRuntimeError
        msg = str(e)
        if "RESOURCE_EXHAUSTED" not in msg and "memory" not in msg.lower():
            raise
        error = " ".join(msg.split())[:400]
        mem = None
    secs = time.perf_counter() - t0
    if mem is None:
        kind, need = oom_bytes(error)
        if kind == "temporaries":
            temps = need
        elif kind == "total":
            temps = need - base.params - base.opt_state - base.other
        else:  # the compiler named no size: the count stands in, and the error says so
            temps = base.temporaries
            error += " (the compiler named no size: temporaries are the analytic count)"
        return dataclasses.replace(base, source="compiled", temporaries=temps, error=error, compile_seconds=secs,
                                   analytic={**base.analytic})
    args = int(mem.argument_size_in_bytes)
    out_extra = max(0, int(mem.output_size_in_bytes) - int(mem.alias_size_in_bytes))
    state_bytes = base.params + base.opt_state
    return dataclasses.replace(
        base, source="compiled", temporaries=int(mem.temp_size_in_bytes),
        other=max(0, args - state_bytes) + out_extra, compile_seconds=secs, analytic={**base.analytic})


def oom_bytes(msg: str) -> tuple[str, int]:
    """What a compiler's out-of-memory message says the step needs per device: ``("temporaries", bytes)``
    from libtpu's "the total memory required for HLO temporaries (16.37G) exceeds available HBM (15.75G)",
    ``("total", bytes)`` from "Used 21.5G of 15.75G hbm", ``("", 0)`` when it names no size."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    for kind, pattern in (("temporaries", r"HLO temporaries \(([\d.]+)\s*([KMGT])"),
                          ("total", r"Used ([\d.]+)\s*([KMGT])i?B? of")):
        m = re.search(pattern, msg)
        if m:
            return kind, int(float(m.group(1)) * units[m.group(2)])
    return "", 0


def plan(run: C.RunConfig, topology: str | Topology, *, analytic: bool = False, utilisation: float = 0.5) -> Plan:
    """The :class:`Plan` of ``run`` on ``topology``: compiled (TPU compiler via libtpu, or XLA CPU for
    ``cpu:N``) unless ``analytic``. A TPU topology without libtpu raises ConfigError naming the fix."""
    topo = topology if isinstance(topology, Topology) else parse_topology(topology)
    if analytic:
        return estimate(run, topo, utilisation=utilisation)
    return compile_plan(run, topo, utilisation=utilisation)


# --- search --------------------------------------------------------------------------------------------
REMATS = ("none", "dots_no_batch", "dots", "full")


def layouts(chips: int, cfg, batch_size: int) -> list[dict[str, int]]:
    """Every (data, fsdp, tensor) split of ``chips`` that the model and batch allow: tensor divides the
    heads (and is at most 8, one host's chips), data x fsdp divides the batch."""
    out = []
    for tensor in (1, 2, 4, 8):
        if chips % tensor or cfg.n_heads % tensor:
            continue
        rest = chips // tensor
        for fsdp in [d for d in range(1, rest + 1) if rest % d == 0]:
            data = rest // fsdp
            out.append({"data": data, "fsdp": fsdp, "tensor": tensor})
    return out


def candidates(run: C.RunConfig, topo: Topology, *, remats: Sequence[str] = REMATS,
               max_accum: int = 16) -> list[C.RunConfig]:
    """Every remat policy x gradient accumulation x mesh layout of ``run`` on ``topo`` whose micro-batch
    splits over the data-parallel devices."""
    B = run.train.batch_size
    cp = max(1, run.mesh.context)  # the context size the user chose is kept; the rest of the chips are split
    out = []
    for remat, accum in itertools.product(remats, [a for a in (1, 2, 4, 8, 16, 32) if a <= max_accum]):
        if B % accum:
            continue
        micro = B // accum
        for lay in layouts(topo.chips // cp, run.model, micro):
            if micro % (lay["data"] * lay["fsdp"]):
                continue
            out.append(run.replace(model=run.model.replace(remat=remat),
                                   train=dataclasses.replace(run.train, grad_accum=accum),
                                   mesh=dataclasses.replace(run.mesh, **lay, context=cp)))
    return out


def _rank_key(p: Plan) -> tuple:
    m = p.run.mesh
    # fastest estimate first; among equals fewer collectives (tensor, then fsdp) and fewer micro-batches
    return (not p.fits, round(p.step_seconds, 6), m.tensor, m.context, m.fsdp,
            p.run.train.grad_accum, p.total)


def search(run: C.RunConfig, topology: str | Topology, *, analytic: bool = False, compile_top: int = 3,
           utilisation: float = 0.5, say: Callable[[str], None] = lambda s: None) -> list[Plan]:
    """Rank every :func:`candidates` configuration by the analytic estimate (fits first, then estimated step
    time, then fewer collectives), then (unless ``analytic``) compile candidates in that order until
    ``compile_top`` of them fit by the compiler's count. Returns the ranked plans (compiled ones first)."""
    topo = topology if isinstance(topology, Topology) else parse_topology(topology)
    run = C.resolve(run)
    plans = []
    for cand in candidates(run, topo):
        try:
            plans.append(estimate(cand, topo, utilisation=utilisation))
        except ConfigError:
            continue
    plans.sort(key=_rank_key)
    if analytic:
        return plans
    compiled: list[Plan] = []
    for p in plans:
        if not p.fits and compiled:
            break
        say(f"compiling {p.mesh_str()} remat={p.run.model.remat} grad_accum={p.run.train.grad_accum} "
            f"(analytic {p.total / GiB:.2f} GiB) ...")
        c = compile_plan(p.run, topo, utilisation=utilisation)
        compiled.append(c)
        if sum(x.fits for x in compiled) >= compile_top or len(compiled) >= 3 * compile_top:
            break
    compiled.sort(key=_rank_key)
    return compiled + [p for p in plans if all(p.run != c.run for c in compiled)]


__all__ = ["CHIPS", "Chip", "Topology", "Plan", "parse_topology", "has_libtpu", "devices", "estimate",
           "compile_plan", "plan", "search", "candidates", "layouts", "activation_bytes", "flops",
           "abstract_batch", "oom_bytes"]
