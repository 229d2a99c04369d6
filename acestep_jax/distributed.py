"""Multi-host start-up: one JAX process per host, all of them forming one device mesh.

Every host runs the same command. Where jax detects the cluster (Cloud TPU, SLURM,
Open MPI, Kubernetes) nothing else is needed; elsewhere set on each host::

    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0   # 1 on the second host

``ACESTEP_JAX_HEARTBEAT_TIMEOUT`` (seconds, default 100): when a process stops
answering for that long, the others exit with an error naming the vanished process
instead of waiting for it forever. CPU hosts exchange data with gloo.

Programs with collectives run through :func:`together`: gloo gives a process that joins a
collective late 30 s, and one host can compile a program minutes after another (its
persistent compilation cache was cold, its CPUs busier), so every host compiles first and
waits for the others at a barrier of the coordination service before running.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

HEARTBEAT_ENV = "ACESTEP_JAX_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_S = 100
BARRIER_TIMEOUT_S = 3600  # compiling can take long; a vanished process is caught by the heartbeat first
_barrier_ids = itertools.count()


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


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Wait until every process has reached this barrier (the coordination service's, no device
    collective). Every process must pass the same barriers in the same order; one process returns at once."""
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None:
        return
    client.wait_at_barrier(f"acestep_jax/{next(_barrier_ids)}/{name}", timeout_in_ms=int(timeout_s * 1000))


def together(jitted, name: str) -> Callable:
    """``jitted`` (a ``jax.jit`` function) in one process; with several, a function that compiles
    it ahead for each new argument signature, waits at a :func:`barrier` until every process has
    compiled that program, then runs it (see the module docstring)."""
    import jax

    if jax.process_count() == 1:
        return jitted
    programs = {}

    def call(*args):
        leaves, tree = jax.tree.flatten(args)
        key = (tree, tuple(map(jax.typeof, leaves)))
        if key not in programs:
            programs[key] = jitted.lower(*args).compile()
            barrier(f"{name} compiled")
        return programs[key](*args)

    return call
