"""``.ci/crash_excerpt.py``: what CI repeats at the end of its log when a test worker crashes."""

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("crash_excerpt", Path(__file__).parents[1] / ".ci" / "crash_excerpt.py")
crash_excerpt = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(crash_excerpt)

LOG = """\
........F
Fatal Python error: Aborted

Thread 0x01 (most recent call first):
  File "/v/threading.py", line 327 in wait
  File "/v/threading.py", line 629 in wait
Current thread 0x02 (most recent call first):
  File "/v/jax/_src/compiler.py", line 1 in a
  File "/v/jax/_src/compiler.py", line 2 in b
  File "/v/jax/_src/pjit.py", line 3 in c
  File "/v/jax/_src/pjit.py", line 4 in d
  File "/r/acestep_jax/training/trainer.py", line 5 in train_step
  File "/r/tests/training/test_trainer.py", line 67 in test_x

Extension modules: numpy
[gw1] node down: Not properly terminated
E1207 21:30:02.071797   18212 execution_engine.cc:54] LLVM compilation error: Cannot allocate memory
E1207 21:30:02.071811   18213 execution_engine.cc:54] LLVM compilation error: Cannot allocate memory
F1207 12:00:00.000000 1 rendezvous.cc:9] Termination timeout for `x` of 40 seconds exceeded.
1 failed, 9 passed
"""


def test_the_crashed_thread_and_xla_fatal_line_are_kept():
    out = crash_excerpt.excerpt(LOG.splitlines())
    assert out[0] == "Fatal Python error: Aborted"
    assert not any("threading.py" in line for line in out)  # idle threads are left out
    assert out[1].startswith("Current thread 0x02") and out[2:5] == LOG.splitlines()[7:10]
    assert out[5].endswith("in train_step")  # the first frame of ours, below the top three
    assert out[-1].startswith("F1207") and "Termination timeout" in out[-1]
    assert sum("Cannot allocate memory" in line for line in out) == 1  # repeated by many threads, kept once


def test_a_log_without_a_crash_gives_nothing():
    assert crash_excerpt.excerpt(["....", "10 passed"]) == []
