"""Multi-host helpers: a process that reaches a collective program late (compiling it, say,
while the other hit its persistent cache) does not break the other's collective. (Without
:func:`~acestep_jax.distributed.together` the same run fails with gloo's 30 s
``DEADLINE_EXCEEDED``, as CI once did.)"""

import numpy as np
import pytest

from tests import multiprocess

pytestmark = pytest.mark.slow

LATE_S = 40  # beyond the 30 s gloo gives a process that joins a collective late


def sum_worker(late_s: float) -> None:
    """Sum an array sharded over both processes' devices, process 1 arriving ``late_s`` late."""
    import time

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from acestep_jax import distributed

    mesh = jax.make_mesh((jax.device_count(),), ("d",))
    local = np.full(jax.local_device_count(), jax.process_index() + 1.0, np.float32)
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), local)
    total = distributed.together(jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P())), "sum")
    if jax.process_index() == 1:
        time.sleep(late_s)
    assert float(total(x)) == sum((i + 1.0) * jax.local_device_count() for i in range(jax.process_count()))


def test_a_late_process_joins_a_collective_run_together():
    multiprocess.run("tests.test_distributed:sum_worker", {"late_s": LATE_S}, timeout=240,
                     devices=2)
