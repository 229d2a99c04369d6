"""Background output writing: complete files, surfaced errors, nothing half-written, bounded queue."""

import json
import threading

import numpy as np
import pytest
import soundfile

from acestep_jax import outputs
from acestep_jax.codec.audio_io import load_audio
from acestep_jax.outputs import OutputWriter


def _audio(seed, n=4000):
    return np.random.default_rng(seed).uniform(-0.9, 0.9, (2, n)).astype(np.float32)


def _leftovers(folder):
    return sorted(p.name for p in folder.rglob(".tmp-*"))


def test_files_and_records_are_complete(tmp_path):
    items = [(tmp_path / "a.wav", _audio(0), None), (tmp_path / "sub" / "b.flac", _audio(1), "flac"),
             (tmp_path / "c.out", _audio(2), "wav")]
    with OutputWriter(workers=2, max_pending=2) as writer:
        futures = [writer.submit(path, audio, 48000, format=fmt, record={"seed": i, "path": str(path)})
                   for i, (path, audio, fmt) in enumerate(items)]
    assert [f.result() for f in futures] == [str(p) for p, _, _ in items]
    for i, (path, audio, _) in enumerate(items):
        got, sr = load_audio(path)
        assert sr == 48000 and got.shape == audio.shape
        np.testing.assert_allclose(got, audio, rtol=0, atol=1e-6)  # flac: 24-bit
        assert json.loads(path.with_suffix(".json").read_text()) == {"seed": i, "path": str(path)}
    assert _leftovers(tmp_path) == []


def test_record_path_and_no_record(tmp_path):
    writer = OutputWriter()
    writer.submit(tmp_path / "x.wav", _audio(0), 16000)
    writer.submit(tmp_path / "y.wav", _audio(1), 16000, record={"k": 1}, record_path=tmp_path / "meta" / "y.txt")
    writer.close()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["x.wav", "y.txt", "y.wav"]
    assert json.loads((tmp_path / "meta" / "y.txt").read_text()) == {"k": 1}
    writer.close()  # closing twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(tmp_path / "z.wav", _audio(2), 16000)


def test_bad_requests_fail_at_submit(tmp_path):
    with OutputWriter() as writer:
        with pytest.raises(ValueError, match="unsupported audio format 'aac'"):
            writer.submit(tmp_path / "a.aac", _audio(0), 44100)
        with pytest.raises(ValueError, match="audio must be"):
            writer.submit(tmp_path / "a.wav", np.zeros((2, 3, 4), np.float32), 44100)
    assert list(tmp_path.iterdir()) == []


def test_write_errors_surface_and_leave_nothing_half_written(tmp_path, monkeypatch):
    def broken(file, *args, **kwargs):
        file.write(b"RIFF....")  # part of the file, then the disk fills up
        raise OSError(28, "No space left on device")

    writer = OutputWriter(workers=1)
    good = writer.submit(tmp_path / "good.wav", _audio(0), 44100, record={"ok": True})
    good.result()
    monkeypatch.setattr(soundfile, "write", broken)
    writer.submit(tmp_path / "bad.flac", _audio(1), 44100, record={"ok": False})
    with pytest.raises(OSError, match="No space left") as info:
        writer.flush()
    assert any("bad.flac" in note for note in info.value.__notes__)
    with pytest.raises(OSError, match="No space left"):  # the writer stays failed
        writer.submit(tmp_path / "later.wav", _audio(2), 44100)
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.json", "good.wav"]
    assert _leftovers(tmp_path) == []


def test_queue_is_bounded_and_submit_does_not_wait_for_writes(tmp_path, monkeypatch):
    release = threading.Event()
    started = threading.Semaphore(0)
    real_save = outputs.save_audio

    def slow_save(*args, **kwargs):
        started.release()
        assert release.wait(10)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(outputs, "save_audio", slow_save)
    writer = OutputWriter(workers=1, max_pending=2)
    writer.submit(tmp_path / "1.wav", _audio(1), 8000)  # returns while the write waits
    writer.submit(tmp_path / "2.wav", _audio(2), 8000)
    assert started.acquire(timeout=10)
    third = threading.Thread(target=writer.submit, args=(tmp_path / "3.wav", _audio(3), 8000))
    third.start()
    third.join(0.3)
    assert third.is_alive()  # two outputs pending: the third submit waits for a slot
    release.set()
    third.join(10)
    assert not third.is_alive()
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.wav", "2.wav", "3.wav"]


def test_exception_in_the_block_still_finishes_writes(tmp_path):
    with pytest.raises(KeyError), OutputWriter() as writer:
        writer.submit(tmp_path / "a.wav", _audio(0), 8000)
        raise KeyError("sampling failed")
    assert (tmp_path / "a.wav").is_file()
