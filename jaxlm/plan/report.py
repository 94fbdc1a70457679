"""The result: a :class:`Plan` (per-device bytes of one configuration on one topology, and the step time
they imply at an assumed utilisation), with the report ``jaxlm plan`` prints (:meth:`Plan.summary`) and
the row of a search table (:meth:`Plan.row`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxlm import params as P
from jaxlm.models import family_of
from jaxlm.plan.abstract import mesh_axes, seq_lens
from jaxlm.plan.topology import GiB, Topology
from jaxlm.train import config as C


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
        """One row of a search table: mesh, remat, grad_accum, batch, total GiB, fits, tokens/s, source."""
        return {"mesh": self.mesh_str(), "remat": self.run.model.remat, "grad_accum": self.run.train.grad_accum,
                "batch": self.run.train.batch_size, "total_gib": self.total / GiB, "fits": self.fits,
                "tokens_per_s": self.tokens_per_second, "source": self.source}


