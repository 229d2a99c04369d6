"""Training on two processes × 4 CPU devices (two "hosts") from an ArrayRecord file.

Equals one process with 8 devices (losses and parameters), writes orbax checkpoints from
both processes, resumes after both are SIGKILLed, and stops with a clear error when one
process dies. The ``*_worker`` functions run inside the launched processes.
"""

import os
import signal
import time

import jax
import numpy as np
import pytest

from acestep_jax.training.data import synthetic_examples
from acestep_jax.training.records import write_records
from tests import multiprocess
from tests.training.test_trainer import make_cfg

pytestmark = pytest.mark.slow

TIMEOUT_S = 400
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["to_q", "to_v", "linear_q"]}


def config(tmp_path, records, lora: bool = False) -> dict:
    cfg = make_cfg(
        tmp_path / "run",
        model={"lora": LORA} if lora else {},
        # pad_multiple 8 with 3..12 prompt tokens: the hosts' own padded lengths differ, so they must agree
        data={"path": str(records), "batch_size": 4, "max_frames": 16, "pad_multiple": 8},
        optim={"grad_accum": 2, "learning_rate": 2e-3, "warmup_steps": 0},
        mesh={"data": 2, "fsdp": 2, "tensor": 2},
        run={"save_every": 2, "keep": 5},
    )
    return cfg.to_dict()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.array_record"
    write_records(path, synthetic_examples(12, text_dim=48, lyric_vocab=300, ssl_dims={"mert": 40, "m-hubert": 24},
                                           frames=(14, 16), text_tokens=(3, 12), lyric_tokens=(2, 16), seed=14))
    return path


# ----------------------------------------------------------------------------- in the processes
def train_worker(cfg: dict, steps: int, result: str, pause_at: int = 0, die_at: int = 0,
                 checkpoints: bool = True) -> None:
    """Resume if possible, train ``steps``; process 0 writes losses and final parameters to ``result``.

    ``pause_at``: after the checkpoint of that step is complete, report and wait to be killed.
    ``die_at``: process 1 kills itself after that step.
    """
    from jax.experimental import multihost_utils

    from acestep_jax.training.config import TrainConfig
    from acestep_jax.training.trainer import Trainer

    def hook(trainer, step):
        if step == pause_at:
            trainer.manager.wait_until_finished()
            open(f"{result}.saved.{jax.process_index()}", "w").close()
            time.sleep(TIMEOUT_S)
        if step == die_at and jax.process_index() == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = TrainConfig.from_dict(cfg, ["run.eval_every=1"] if pause_at or die_at else [])
    trainer = Trainer(cfg, eval_fn=hook, checkpoints=checkpoints)
    start = trainer.step if trainer.restore() else 0
    losses = [m["loss"] for m in trainer.fit(steps)]
    trainer.close()
    params = {k: v for k, v in _flat(trainer.state["params"]).items()}
    params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        np.savez(result, start=start, losses=np.asarray(losses), **{f"param:{k}": v for k, v in params.items()})


def _flat(params) -> dict:
    from flax import nnx

    return {"/".join(map(str, k)): v[...] for k, v in nnx.to_flat_state(params)}


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xla_cache")


def launch_train(cfg, steps, result, cache, *, processes=2, **kw):
    """``train_worker`` on 2 processes × 4 devices, or (``processes=1``) one process with 8 devices."""
    return multiprocess.run("tests.training.test_multiprocess_training:train_worker",
                            {"cfg": cfg, "steps": steps, "result": str(result), **kw}, timeout=TIMEOUT_S,
                            processes=processes, devices=8 // processes, cache_dir=cache)


def load(result):
    with np.load(result) as z:
        params = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("param:")}
        return int(z["start"]), z["losses"], params


def assert_same_params(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= atol, worst


# ----------------------------------------------------------------------------- tests
def test_two_processes_equal_one_and_resume_after_sigkill(tmp_path, records, xla_cache):
    """Both processes are SIGKILLed once the step-2 checkpoint is complete and restarted; their
    steps 3-4 and final parameters equal 4 uninterrupted steps of one process with 8 devices
    (bit-exact resume on one process: ``test_trainer.test_kill_and_resume_is_exact``)."""
    cfg = config(tmp_path, records)
    result = tmp_path / "resumed.npz"
    group = multiprocess.Group("tests.training.test_multiprocess_training:train_worker",
                               {"cfg": cfg, "steps": 4, "result": str(result), "pause_at": 2}, cache_dir=xla_cache)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not all(os.path.exists(f"{result}.saved.{i}") for i in range(2)):
            assert all(p.poll() is None for p in group.procs), group.output()
            assert time.monotonic() < deadline, "no checkpoint at step 2 in time"
            time.sleep(0.5)
    finally:
        group.kill(signal.SIGKILL)
    assert not result.exists()
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["2"]

    launch_train(cfg, 2, result, xla_cache)
    start, resumed, params = load(result)
    assert start == 2 and len(resumed) == 2
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["2", "4"]
    data_files = {p.name for p in (ckpts / "4" / "data").iterdir()}
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= data_files  # each process its data position

    launch_train(cfg, 4, tmp_path / "single.npz", xla_cache, processes=1, checkpoints=False)
    _, ref_losses, ref_params = load(tmp_path / "single.npz")
    np.testing.assert_allclose(resumed, ref_losses[2:], rtol=1e-5)
    assert_same_params(params, ref_params, atol=1e-5)


def test_a_dying_process_stops_the_other_with_a_clear_error(tmp_path, records, xla_cache):
    cfg = config(tmp_path, records)
    group = multiprocess.Group("tests.training.test_multiprocess_training:train_worker",
                               {"cfg": cfg, "steps": 4, "result": str(tmp_path / "r.npz"), "die_at": 1},
                               cache_dir=xla_cache)
    try:
        assert group.procs[1].wait(TIMEOUT_S) == -signal.SIGKILL
        died = time.monotonic()
        survivor = group.procs[0].wait(10 * multiprocess.HEARTBEAT_S)  # not a hang
        waited = time.monotonic() - died
    finally:
        group.kill()
    out = group.output()
    assert survivor != 0 and waited < 10 * multiprocess.HEARTBEAT_S
    assert "another task died" in out and "stopped sending heartbeats" in out, out


def test_lora_on_two_processes_equals_one(tmp_path, records, xla_cache):
    cfg = config(tmp_path, records, lora=True)
    launch_train(cfg, 2, tmp_path / "lora.npz", xla_cache)
    _, losses, params = load(tmp_path / "lora.npz")
    assert params and all("lora" in k for k in params)
    launch_train(cfg, 2, tmp_path / "single.npz", xla_cache, processes=1, checkpoints=False)
    _, ref_losses, ref_params = load(tmp_path / "single.npz")
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert_same_params(params, ref_params, atol=1e-5)

    from acestep_jax.lora import read_lora

    adapter = read_lora(tmp_path / "run" / "lora" / "step_2")  # gathered from both, written by process 0
    # to_q and to_v of attn and cross_attn in 2 blocks, linear_q in the lyric encoder's block
    assert adapter.rank == LORA["r"] and len(adapter.pairs) == 2 * 4 + 1
