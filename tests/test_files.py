"""``acestep_jax.files``: atomic writes, stale temporaries, and waiting for writers that outlive a failure."""

import threading
import time
from pathlib import Path

import pytest

from acestep_jax.files import TEMP_PREFIX, remove_temporaries, wait_until_settled, write_atomic


def test_write_atomic_leaves_nothing_on_failure(tmp_path):
    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(tmp_path / "out.json", fail)
    assert list(tmp_path.iterdir()) == []
    write_atomic(tmp_path / "out.json", lambda tmp: Path(tmp).write_text("{}"))
    (tmp_path / f"{TEMP_PREFIX}killed").write_text("x")
    assert remove_temporaries(tmp_path) == [f"{TEMP_PREFIX}killed"]
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_wait_until_settled_outlasts_late_writers(tmp_path):
    stop = time.monotonic() + 0.6

    def writer():  # as tensorstore's threads do after orbax gave up on a save
        i = 0
        while time.monotonic() < stop:
            (tmp_path / f"late-{i}").write_text("x")
            i += 1
            time.sleep(0.1)

    thread = threading.Thread(target=writer)
    thread.start()
    start = time.monotonic()
    wait_until_settled(tmp_path, quiet=0.3)
    assert time.monotonic() >= stop and time.monotonic() - start < 3
    thread.join()
    count = len(list(tmp_path.iterdir()))
    time.sleep(0.3)
    assert len(list(tmp_path.iterdir())) == count
