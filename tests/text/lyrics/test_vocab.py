"""Locating the lyric vocabulary: explicit path, checkpoint folder, cache, (faked) download."""

import shutil

import pytest

from acestep_jax.text.lyrics import vocab
from acestep_jax.text.lyrics.vocab import VOCAB_FILENAME, VOCAB_SHA256, find_lyrics_vocab, sha256_of


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(url, dest):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(vocab, "_download", refuse)


def _fake_download(monkeypatch, source=None, payload=b"not the vocabulary"):
    calls = []

    def fetch(url, dest):
        calls.append(url)
        if source is not None:
            shutil.copyfile(source, dest)
        else:
            dest.write_bytes(payload)

    monkeypatch.setattr(vocab, "_download", fetch)
    return calls


def test_golden_vocab_has_pinned_hash(lyrics_vocab_path):
    assert sha256_of(lyrics_vocab_path) == VOCAB_SHA256


def test_explicit_path(lyrics_vocab_path, tmp_path):
    assert find_lyrics_vocab(lyrics_vocab_path, cache_dir=tmp_path) == lyrics_vocab_path
    with pytest.raises(FileNotFoundError, match="path"):
        find_lyrics_vocab(tmp_path / "missing.json", cache_dir=tmp_path)


def test_checkpoint_dir(lyrics_vocab_path, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copyfile(lyrics_vocab_path, ckpt / VOCAB_FILENAME)
    got = find_lyrics_vocab(checkpoint_dir=ckpt, cache_dir=tmp_path / "cache")
    assert got == ckpt / VOCAB_FILENAME


def test_no_download_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=False"):
        find_lyrics_vocab(checkpoint_dir=tmp_path, download=False, cache_dir=tmp_path / "cache")


def test_download_into_cache_then_reuse(lyrics_vocab_path, tmp_path, monkeypatch):
    calls = _fake_download(monkeypatch, source=lyrics_vocab_path)
    cache = tmp_path / "cache"
    got = find_lyrics_vocab(checkpoint_dir=tmp_path, cache_dir=cache)
    assert got == cache / VOCAB_FILENAME and sha256_of(got) == VOCAB_SHA256
    assert calls == [vocab.VOCAB_URL] and vocab.VOCAB_COMMIT in vocab.VOCAB_URL
    assert sorted(p.name for p in cache.iterdir()) == [VOCAB_FILENAME]  # no temp files left
    assert find_lyrics_vocab(cache_dir=cache, download=False) == got
    assert len(calls) == 1


def test_download_sha_mismatch(tmp_path, monkeypatch):
    _fake_download(monkeypatch)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="sha256"):
        find_lyrics_vocab(cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_corrupt_cache_is_replaced(lyrics_vocab_path, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / VOCAB_FILENAME).write_text("{}")
    with pytest.raises(FileNotFoundError):
        find_lyrics_vocab(cache_dir=cache, download=False)
    _fake_download(monkeypatch, source=lyrics_vocab_path)
    assert sha256_of(find_lyrics_vocab(cache_dir=cache)) == VOCAB_SHA256


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("ACESTEP_JAX_CACHE")  # the test run's own (tests/conftest.py)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert vocab.default_cache_dir() == tmp_path / ".cache" / "acestep_jax"
