"""Multi-host start-up: one JAX process per host, all of them forming one device mesh.

Every host runs the same command. Where jax detects the cluster (Cloud TPU, SLURM,
Open MPI, Kubernetes) nothing else is needed; elsewhere set on each host::

    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0   # 1 on the second host

``ACESTEP_JAX_HEARTBEAT_TIMEOUT`` (seconds, default 100): when a process stops
answering for that long, the others exit with an error naming the vanished process
instead of waiting for it forever. CPU hosts exchange data with gloo.
"""

from __future__ import annotations

import os

HEARTBEAT_ENV = "ACESTEP_JAX_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_S = 100


def requested(flag: bool = False) -> bool:
    """Whether to start multi-host: ``flag`` (``--distributed``) or a coordinator in the environment."""
    return flag or bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def initialize() -> None:
    """Join the other processes (see the module docstring); call before any other jax use.
    A second call does nothing."""
    import jax

    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        num_processes=_env_int("JAX_NUM_PROCESSES"),
        process_id=_env_int("JAX_PROCESS_ID"),
        heartbeat_timeout_seconds=_env_int(HEARTBEAT_ENV) or DEFAULT_HEARTBEAT_S,
    )
