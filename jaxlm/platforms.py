"""Which JAX platforms to start: none that this machine cannot run.

The ``plan`` extra installs libtpu (the TPU compiler ``jaxlm plan`` compiles with), and JAX then tries the
TPU backend at start-up on every machine: on one without a TPU, libtpu prints its start-up noise ("Failed
to find host bounds for accelerator type", "unexpected worker hostname", "Logging before InitGoogle()") and
takes its lock file (``/tmp/libtpu_lockfile``), so a second process that wants the compiler is refused.

:func:`skip_absent_tpu` (run by ``import jaxlm``, before any backend starts) tells JAX to start the CPU
backend only when no TPU is attached (JAX's own PCI test: Google's vendor id with a TPU device id) and no
GPU is visible. On a TPU VM or a GPU machine, or when the user set ``JAX_PLATFORMS`` (even to ``""``),
nothing changes. ``jaxlm plan`` does not need the TPU backend: it loads libtpu's compiler for a topology
on its own (:func:`jax.experimental.topologies.get_topology_desc`).
"""

from __future__ import annotations

import glob
import os
import sys

ENV = "JAX_PLATFORMS"
_GPU_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def tpu_attached() -> bool:
    """Whether a TPU chip is on this machine's PCI bus (JAX's own test, ``hardware_utils``, which knows each
    generation's device id: Google's vendor id alone also marks a cloud VM's virtual network card) or exposed
    as an accelerator device file (``/dev/accel*``, ``/dev/vfio/N``)."""
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return True
    try:
        from jax._src import hardware_utils
    except ImportError:  # a jax that moved it: do not guess, leave JAX's choice alone
        return True
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0


def gpu_visible() -> bool:
    """Whether an NVIDIA or AMD GPU device file exists (JAX starts the CUDA / ROCm backend only then)."""
    return any(os.path.exists(d) for d in _GPU_DEVICES)


def skip_absent_tpu() -> str | None:
    """Start only the CPU backend on a machine with neither a TPU nor a GPU, unless ``JAX_PLATFORMS`` is set.

    Returns the platforms set (``"cpu"``), or None when it left JAX's choice alone. Works whether or not
    jax is already imported, as long as no backend has started (after that the choice is made)."""
    if ENV in os.environ or tpu_attached() or gpu_visible():
        return None
    jax = sys.modules.get("jax")
    if jax is None or getattr(jax, "config", None) is None:
        os.environ[ENV] = "cpu"  # read by jax when it is imported
        return "cpu"
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return None
    jax.config.update("jax_platforms", "cpu")
    os.environ[ENV] = "cpu"  # and for this process's children (multi-process runs, workers)
    return "cpu"


__all__ = ["skip_absent_tpu", "tpu_attached", "gpu_visible"]
