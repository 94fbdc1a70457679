"""Multi-process (multi-host) runs: joining the job, and which rows of each batch this process loads.

One jaxlm process runs per host (per GPU node, per TPU VM); together they see every device of the job and
:func:`jaxlm.sharding.make_mesh` lays the global mesh over them. Every process runs the same program on
its own share of each batch (:meth:`jaxlm.parallel.Parallel.local_rows`, then
:meth:`~jaxlm.parallel.Parallel.place_batch` with ``global_rows``);
Orbax saves and restores from all processes.

How a process learns its place, first match wins:

1. explicit arguments / CLI flags ``--coordinator HOST:PORT --num-processes N --process-id I``;
2. environment variables ``JAXLM_COORDINATOR``, ``JAXLM_NUM_PROCESSES``, ``JAXLM_PROCESS_ID`` (or JAX's
   own ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``);
3. a cluster JAX detects by itself -- a Cloud TPU pod slice, SLURM (``srun``), Open MPI (``mpirun``) --
   where :func:`jax.distributed.initialize` runs without arguments;
4. otherwise: a single process, nothing to join.

On CPU the collectives between processes use gloo (set here before the backend starts).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import jax

from jaxlm.config import ConfigError

log = logging.getLogger(__name__)

FLAGS = ("--coordinator", "--num-processes", "--process-id")


@dataclass(frozen=True)
class Settings:
    """Where this process sits in the job; all None = decide from the environment."""

    coordinator: str | None = None  # "host:port" of process 0
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def explicit(self) -> bool:
        return any(v is not None for v in (self.coordinator, self.num_processes, self.process_id))


def _env_int(*names: str) -> int | None:
    for n in names:
        v = os.environ.get(n)
        if v not in (None, ""):
            try:
                return int(v)
            except ValueError as e:
                raise ConfigError(f"environment variable {n}={v!r} must be an integer.") from e
    return None


def settings_from_env() -> Settings:
    """``JAXLM_*`` (then ``JAX_*``) environment variables -> :class:`Settings`."""
    return Settings(
        os.environ.get("JAXLM_COORDINATOR") or os.environ.get("JAX_COORDINATOR_ADDRESS") or None,
        _env_int("JAXLM_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
        _env_int("JAXLM_PROCESS_ID", "JAX_PROCESS_ID"),
    )


def pop_flags(argv: Sequence[str]) -> tuple[list[str], Settings]:
    """Strip ``--coordinator``, ``--num-processes``, ``--process-id`` (``--flag value`` or ``--flag=value``)
    from ``argv``; return the other arguments and the settings they gave."""
    rest, found = [], {}
    it = iter(range(len(argv)))
    argv = list(argv)
    for i in it:
        a = argv[i]
        name, eq, value = a.partition("=")
        if name in FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{name} needs a value (e.g. {name}=...)")
                value = argv[i + 1]
                next(it, None)
            found[name] = value
        else:
            rest.append(a)
    try:
        s = Settings(found.get("--coordinator"),
                     int(found["--num-processes"]) if "--num-processes" in found else None,
                     int(found["--process-id"]) if "--process-id" in found else None)
    except ValueError as e:
        raise ConfigError(f"--num-processes and --process-id take integers: {e}") from e
    return rest, s


def detected_cluster() -> str | None:
    """The cluster JAX can join without arguments, if this process runs in one: ``"tpu"`` (a multi-host
    Cloud TPU slice), ``"slurm"`` (more than one task), ``"mpi"`` (Open MPI, more than one rank)."""
    if int(os.environ.get("SLURM_NTASKS", os.environ.get("SLURM_NPROCS", "1")) or 1) > 1 and \
            "SLURM_PROCID" in os.environ:
        return "slurm"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "mpi"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


_INITIALIZED = False


def initialize(settings: Settings | None = None, *, timeout_s: int = 300,
               cpu_collectives: str = "gloo") -> bool:
    """Join the multi-process job described by ``settings`` / the environment / the cluster (see the
    module docstring). Returns True when this is a multi-process run. Call it before anything touches a
    device; calling it again is a no-op.

    ``timeout_s`` bounds the wait for the other processes (an absent peer fails instead of hanging).
    """
    global _INITIALIZED
    if _INITIALIZED:
        return jax.process_count() > 1
    s = settings if settings is not None and settings.explicit else settings_from_env()
    cluster = None if s.explicit else detected_cluster()
    if not s.explicit and cluster is None:
        return False
    if s.explicit:
        missing = [f for f, v in (("--coordinator", s.coordinator), ("--num-processes", s.num_processes),
                                  ("--process-id", s.process_id)) if v is None]
        if missing:
            raise ConfigError(
                f"a multi-process run needs all of --coordinator HOST:PORT, --num-processes N and "
                f"--process-id I (or JAXLM_COORDINATOR / JAXLM_NUM_PROCESSES / JAXLM_PROCESS_ID); missing "
                f"{missing}. On TPU pods, SLURM and mpirun give none of them: they are detected."
            )
        if not 0 <= s.process_id < s.num_processes:
            raise ConfigError(f"--process-id={s.process_id} must be in [0, --num-processes={s.num_processes}).")
        if ":" not in s.coordinator:
            raise ConfigError(f"--coordinator={s.coordinator!r} must be HOST:PORT (process 0's address).")
    # Harmless on GPU/TPU (it configures only the CPU client); on CPU it is what lets processes talk.
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if s.explicit:
        jax.distributed.initialize(s.coordinator, num_processes=s.num_processes, process_id=s.process_id,
                                   initialization_timeout=timeout_s)
    else:
        log.info("joining the %s cluster detected from the environment", cluster)
        jax.distributed.initialize(initialization_timeout=timeout_s)
    _INITIALIZED = True
    log.info("process %d of %d: %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return jax.process_count() > 1


def shutdown() -> None:
    """Leave the job (waits for the other processes); a no-op when :func:`initialize` joined nothing."""
    global _INITIALIZED
    if _INITIALIZED:
        jax.distributed.shutdown()
        _INITIALIZED = False


def is_main() -> bool:
    """True on the process that logs, writes summaries and prints (process 0)."""
    return jax.process_index() == 0


__all__ = ["FLAGS", "Settings", "settings_from_env", "pop_flags", "detected_cluster", "initialize",
           "shutdown", "is_main"]
