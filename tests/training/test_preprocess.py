"""Preprocessing a song folder into records (tiny random codec / text encoder)."""

import numpy as np
import pytest
import soundfile as sf

from acestep_jax.training.preprocess import Preprocessor, discover, prepare_audio, preprocess_folder
from acestep_jax.training.records import RecordSource


def _song(folder, name, seconds, prompt=None, lyrics=None, sr=44100, silent=False):
    t = np.arange(int(sr * seconds)) / sr
    wave = np.zeros_like(t) if silent else 0.3 * np.sin(2 * np.pi * 330 * t)
    sf.write(folder / f"{name}.wav", np.stack([wave, wave], 1), sr)
    if prompt is not None:
        (folder / f"{name}_prompt.txt").write_text(prompt)
    if lyrics is not None:
        (folder / f"{name}_lyrics.txt").write_text(lyrics)


def test_prepare_audio():
    sr = 1000
    a = prepare_audio(np.full((2, 500), 2.0), sr)
    assert a.shape == (2, 3000) and a.max() == 1.0  # clipped, padded to 3 s
    assert prepare_audio(np.zeros((2, 5000)), sr) is None
    assert prepare_audio(np.ones((2, 300 * sr)), sr).shape == (2, 240 * sr)


def test_preprocess_folder_tiny(tmp_path, lyrics_vocab_path):
    songs = tmp_path / "songs"
    songs.mkdir()
    _song(songs, "a", 4.0, "pop, piano", "[verse]\nhello world")
    _song(songs, "b", 1.0, "rock")  # no lyrics, shorter than 3 s
    _song(songs, "c", 2.0)  # no prompt: skipped
    _song(songs, "d", 4.0, "ambient", silent=True)  # silent: skipped
    np.save(songs / "a_mert.npy", np.ones((120, 40), np.float32))
    assert [i.key for i in discover(songs)] == ["a", "b", "d"]
    pre = Preprocessor.tiny_random(lyrics_vocab=str(lyrics_vocab_path))
    paths = preprocess_folder(songs, tmp_path / "rec", pre, shard_size=1)
    assert len(paths) == 2
    src = RecordSource(tmp_path / "rec")
    a, b = src[0], src[1]
    assert (a["key"], b["key"]) == ("a", "b")
    assert a["latents"].shape[:2] == (8, 16) and a["latents"].shape[2] == 43  # 4 s at 44.1 kHz / 4096
    assert b["latents"].shape[2] == 32  # padded to 3 s
    assert a["text_states"].shape[1] == 48 and len(a["text_states"]) > len(b["text_states"])
    assert a["lyric_ids"][0] == 261 and len(a["lyric_ids"]) > 3
    np.testing.assert_array_equal(b["lyric_ids"], [0])
    assert a["ssl/mert"].shape == (120, 40) and "ssl/mert" not in b
    assert not a["speaker"].any()
    with pytest.raises(FileNotFoundError):
        discover(tmp_path / "nothing")


def test_preprocess_from_converted_checkpoint(tmp_path, lyrics_vocab_path, golden):
    """The real path: the codec, prompt encoder and tokenizers of a converted checkpoint."""
    from acestep_jax.convert.release import convert_checkpoint
    from tests.fake_checkpoint import build_reference_folder

    ckpt = tmp_path / "ckpt"
    convert_checkpoint(build_reference_folder(tmp_path / "hf"), ckpt, lyrics_vocab=lyrics_vocab_path,
                       names=["dcae", "vocoder", "text_encoder"], progress=False)
    songs = tmp_path / "songs"
    songs.mkdir()
    _song(songs, "a", 3.0, "rock guitar", "[verse]\nhello world")
    pre = Preprocessor.from_checkpoint(str(ckpt))
    preprocess_folder(songs, tmp_path / "rec", pre)
    a = RecordSource(tmp_path / "rec")[0]
    width = golden("umt5").config["d_model"]  # the fake checkpoint's text encoder is the golden one
    assert a["latents"].shape == (8, 16, 32)
    assert a["text_states"].shape == (3, width)  # rock guitar </s>
    assert a["lyric_ids"][0] == 261
