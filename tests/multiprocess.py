"""Run test code in several JAX processes on this machine, as if on several hosts.

:func:`run` starts ``python -m tests.multiprocess MODULE:FUNCTION ARGS_JSON`` once per
process, each with its own fake CPU devices, all joined by ``jax.distributed`` over a free
loopback port (the project's :func:`acestep_jax.distributed.initialize`). Every process runs
under a deadline and all are killed when one fails or the deadline passes, so a test never
hangs. One process with 8 devices runs the same way (the single-host reference).

To keep CI fast the processes compile with LLVM optimisation off and share a persistent
compilation cache (``cache_dir``): relaunching the same program skips its compilation.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from tests.helpers import REPO

HEARTBEAT_S = 5  # a vanished process is noticed after this many seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Finished:
    returncode: int
    output: str  # stdout and stderr


class Group:
    """Processes ``0..n-1`` running ``target(**args)`` with ``devices`` CPU devices each."""

    def __init__(self, target: str, args: dict, *, processes: int = 2, devices: int = 4, log_dir=None,
                 cache_dir=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
        env.update(
            JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
            XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
        )
        if cache_dir:
            env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        if processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES=str(processes),
                       ACESTEP_JAX_HEARTBEAT_TIMEOUT=str(HEARTBEAT_S))
        self.logs = []
        self.procs = []
        for i in range(processes):
            # the logs live as long as the group (closed with the test's temporary files)
            if log_dir:
                out = open(os.path.join(log_dir, f"process_{i}.log"), "w+")  # noqa: SIM115
            else:
                out = tempfile.TemporaryFile("w+")  # noqa: SIM115
            self.logs.append(out)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.multiprocess", target, json.dumps(args)],
                cwd=REPO, env={**env, "JAX_PROCESS_ID": str(i)}, stdout=out, stderr=subprocess.STDOUT,
                text=True, start_new_session=True,
            ))

    def wait(self, timeout: float) -> list[Finished]:
        """Wait for all; on the deadline kill them all and raise ``TimeoutError`` with their output."""
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.procs):
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"processes still running after {timeout} s:\n{self.output()}")
            time.sleep(0.2)
        return [Finished(p.returncode, out) for p, out in zip(self.procs, self.outputs())]

    def kill(self, sig=signal.SIGKILL) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, sig)
        for p in self.procs:
            p.wait(30)

    def outputs(self) -> list[str]:
        """Each process's output so far (stdout and stderr)."""
        texts = []
        for log in self.logs:
            log.flush()
            log.seek(0)
            texts.append(log.read())
        return texts

    def output(self) -> str:
        """The tails of all outputs, labelled, for error messages."""
        return "\n".join(f"--- process {i} ---\n{_tail(t)}" for i, t in enumerate(self.outputs()))


def _tail(text: str, chars: int = 6000) -> str:
    """The end of a process's output without gloo's connection chatter and native stack frames."""
    keep = [line for line in text.splitlines() if not line.startswith(("[Gloo]", "    @ "))]
    return "\n".join(keep)[-chars:]


def run(target: str, args: dict, *, timeout: float, processes: int = 2, devices: int = 4, log_dir=None,
        cache_dir=None, check: bool = True) -> list[Finished]:
    """Run ``target`` in ``processes`` processes and wait; with ``check`` every one must exit 0."""
    group = Group(target, args, processes=processes, devices=devices, log_dir=log_dir, cache_dir=cache_dir)
    try:
        done = group.wait(timeout)
    except BaseException:
        group.kill()
        raise
    if check and any(d.returncode for d in done):
        lines = "\n".join(f"--- process {i} (exit {d.returncode}) ---\n{_tail(d.output)}" for i, d in enumerate(done))
        raise AssertionError(f"a process failed:\n{lines}")
    return done


def _main() -> None:
    import importlib

    from acestep_jax import distributed

    target, args = sys.argv[1], json.loads(sys.argv[2])
    if distributed.requested():
        distributed.initialize()
    module, name = target.split(":")
    getattr(importlib.import_module(module), name)(**args)


if __name__ == "__main__":
    _main()
