"""Audio file round trips and clear errors."""

import numpy as np
import pytest
import soundfile as sf

from acestep_jax.codec.audio_io import load_audio, save_audio


@pytest.fixture
def stereo():
    t = np.arange(22050) / 22050
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)


def test_wav_and_flac_round_trip(tmp_path, stereo):
    for fmt, tol in (("wav", 0.0), ("flac", 1e-6)):
        path = save_audio(tmp_path / f"a.{fmt}", stereo, 22050)
        audio, sr = load_audio(path)
        assert sr == 22050 and audio.dtype == np.float32 and audio.shape == stereo.shape
        assert np.abs(audio - stereo).max() <= tol
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("fmt", ["ogg", "mp3"])
def test_lossy_round_trip(tmp_path, stereo, fmt):
    path = save_audio(tmp_path / "a.bin", stereo, 22050, format=fmt)
    audio, sr = load_audio(path)
    assert sr == 22050 and audio.shape[0] == 2
    assert abs(audio.shape[1] - stereo.shape[1]) < 4096  # codec delay / padding only
    rms = np.sqrt((audio**2).mean(axis=1))
    np.testing.assert_allclose(rms, np.sqrt((stereo**2).mean(axis=1)), rtol=0.3)  # both channels kept


def test_mono_becomes_stereo(tmp_path):
    mono = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    sf.write(tmp_path / "m.wav", mono, 16000, subtype="FLOAT")
    audio, sr = load_audio(tmp_path / "m.wav")
    assert audio.shape == (2, 1000) and sr == 16000
    np.testing.assert_array_equal(audio[0], audio[1])


def test_errors_name_the_path(tmp_path, stereo):
    with pytest.raises(FileNotFoundError, match="absent.wav"):
        load_audio(tmp_path / "absent.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    with pytest.raises(ValueError, match="junk.wav"):
        load_audio(junk)
    sf.write(tmp_path / "four.wav", np.zeros((100, 4), np.float32), 8000)
    with pytest.raises(ValueError, match="4 channels"):
        load_audio(tmp_path / "four.wav")
    with pytest.raises(ValueError, match="unsupported audio format"):
        save_audio(tmp_path / "a.aac", stereo, 44100)
