"""Scheduler tables and steps against the reference (golden/schedulers)."""

import jax.numpy as jnp
import numpy as np
import pytest

from acestep_jax.sampling.schedulers import (
    HeunState,
    euler_step,
    heun_substep,
    omega_rescale,
    pingpong_step,
    schedule,
)
from tests.helpers import assert_close, golden_matches

SCHEDULERS = ("euler", "heun", "pingpong")


def _table_cases():
    """``(name, steps, sigma_max)`` of every ``<name>_<steps>_<sigma_max>_timesteps`` table."""
    pattern = rf"({'|'.join(SCHEDULERS)})_(\d+)_([0-9.]+)_timesteps"
    return _every_scheduler(golden_matches("schedulers", pattern), SCHEDULERS)


def _trajectory_cases():
    """``(name, omega)`` of every ``traj_<name>_omega<omega>`` golden trajectory."""
    pattern = r"traj_(euler|heun)_omega([0-9.]+)"
    return _every_scheduler(golden_matches("schedulers", pattern), ("euler", "heun"))


def _every_scheduler(cases, names):
    missing = set(names) - {case[0] for case in cases}
    if missing:
        raise RuntimeError(f"the golden schedulers/io.npz has no case of {sorted(missing)}")
    return cases


@pytest.mark.parametrize("name,steps,sigma_max", _table_cases())
def test_tables(golden, name, steps, sigma_max):
    io = golden("schedulers").io
    steps_run, sigma = int(steps), float(sigma_max)
    n = steps_run if sigma == 1.0 else int(sigma * steps_run)  # audio2audio's shortened schedule
    table = schedule(name, n, sigma)
    np.testing.assert_array_equal(table.timesteps, io[f"{name}_{steps}_{sigma_max}_timesteps"])
    np.testing.assert_array_equal(table.sigmas, io[f"{name}_{steps}_{sigma_max}_sigmas"])


def test_oss_steps(golden):
    io = golden("schedulers").io
    table = schedule("euler", 0, oss_steps=[int(s) for s in io["oss_steps"]])
    np.testing.assert_array_equal(table.timesteps, io["oss_timesteps"])
    np.testing.assert_array_equal(table.sigmas, io["oss_sigmas"])
    with pytest.raises(ValueError, match="heun"):
        schedule("heun", 0, oss_steps=[1, 2])


def test_bad_arguments():
    with pytest.raises(ValueError, match="scheduler_type"):
        schedule("ddim", 10)
    with pytest.raises(ValueError, match="steps"):
        schedule("euler", 0)


@pytest.mark.parametrize("name,omega", _trajectory_cases())
def test_trajectories(golden, name, omega):
    g = golden("schedulers")
    io, a = g.io, g.io["traj_A"]
    table = schedule(name, g.config["trajectory_steps"])
    x, w = jnp.asarray(io["traj_x0"]), omega_rescale(float(omega))
    state = HeunState.zeros(x)
    for k in range(table.num_steps):
        v = jnp.einsum("ij,bjhw->bihw", a, x) * (1 + table.timesteps[k] / 1000) - 0.3 * x
        if name == "euler":
            x = euler_step(x, v, table.sigmas[k], table.sigmas[k + 1], w)
        else:
            x, state = heun_substep(k, x, v, jnp.asarray(table.sigmas), w, state)
    assert_close(x, io[f"traj_{name}_omega{omega}"], what=f"traj_{name}_omega{omega}")


def test_pingpong_step_endpoints():
    x, v, noise = jnp.ones((1, 8, 16, 3)), jnp.full((1, 8, 16, 3), 0.5), jnp.full((1, 8, 16, 3), 2.0)
    # at sigma_next = 0 the step returns the denoised sample x - sigma v
    assert_close(pingpong_step(x, v, 0.4, 0.0, noise), x - 0.2, what="pingpong to 0")
