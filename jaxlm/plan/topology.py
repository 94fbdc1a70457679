"""The machines planned for: TPU generations (:data:`CHIPS`), slices (:class:`Topology`, parsed from
``v5e-16`` / ``v5e:4x4`` / ``cpu:8`` by :func:`parse_topology`) and their devices (:func:`devices`:
compile-only TPU devices from libtpu, or this process's CPU devices)."""

from __future__ import annotations

import glob
import importlib.util
import math
import os
import re
from dataclasses import dataclass

import jax

from jaxlm import metrics as M
from jaxlm.config import ConfigError

GiB = 2**30


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
    """Whether the TPU compiler (the ``libtpu`` package) is installed."""
    return importlib.util.find_spec("libtpu") is not None


def share_libtpu() -> None:
    """Let this process load libtpu beside other processes when no TPU is attached (no ``/dev/accel*``, no
    ``/dev/vfio/N``): sets ``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` unless the user set it. Without it libtpu's
    lock file (``/tmp/libtpu_lockfile``) refuses a second process, so two planners, or a planner beside a
    run that loaded libtpu, could not compile at once; with no TPU to share, libtpu only compiles here.
    Takes effect only before libtpu loads (it reads the variable then)."""
    if not glob.glob("/dev/accel*") and not glob.glob("/dev/vfio/[0-9]*"):
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


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

    share_libtpu()  # before get_topology_desc loads libtpu
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
