"""The reference trainer's MERT / mHuBERT feature extraction (infer_mert_ssl / infer_mhubert_ssl)."""

import jax
import numpy as np
import pytest

from acestep_jax.training.ssl_features import (
    MERT_RECIPE,
    MHUBERT_RECIPE,
    SSLFeatureExtractor,
    chunk_song,
    normalized_mono,
)
from tests.helpers import assert_close
from tests.models.test_ssl import golden_hubert

CASES = [("mert", MERT_RECIPE), ("mhubert", MHUBERT_RECIPE)]


def _extractor(golden, key, recipe, **kw):
    return SSLFeatureExtractor(golden_hubert(golden("ssl/features").config[f"{key}_model"]), recipe, **kw)


@pytest.mark.parametrize("key, recipe", CASES)
def test_features_match_the_reference_trainer(golden, key, recipe):
    g = golden("ssl/features")
    assert (g.config[f"{key}_sample_rate"], g.config[f"{key}_chunk_seconds"]) == (
        recipe.sample_rate, recipe.chunk_seconds)
    ex = _extractor(golden, key, recipe, chunk_batch=3)
    assert ex.chunk_batch == jax.local_device_count()  # rounded up to shard over every local device
    feats = ex(g.io["target_wavs"], g.io["wav_lengths"])
    assert len(feats) == len(g.io["wav_lengths"]) > 1
    for i, f in enumerate(feats):
        assert_close(f, g.io[f"{key}_{i}"], what=f"{key}_{i}")
    assert ex.compiled_programs() == 1


def test_whole_songs_of_any_length_share_one_program(golden):
    g = golden("ssl/features")
    ex = _extractor(golden, "mert", MERT_RECIPE, chunk_batch=8)
    wavs, lengths = g.io["target_wavs"], g.io["wav_lengths"]
    songs = [wavs[i, :, : lengths[i]] for i in range(len(lengths))]
    together = ex.songs(songs)
    alone = [ex.songs([s])[0] for s in songs]
    for i, (a, b) in enumerate(zip(together, alone)):
        assert_close(a, g.io[f"mert_{i}"], what=f"batched {i}")
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    short = ex.songs([songs[0][:, :48000 * 3 + 17]])[0]
    assert short.shape == ((3 * 24000 + 8 + 319) // 320, ex.width)
    assert ex.compiled_programs() == 1


def test_normalisation_and_chunking():
    rng = np.random.default_rng(0)
    wavs = np.zeros((2, 2, 48000), np.float32)
    wavs[0, :, :30000] = rng.standard_normal((2, 30000))
    wavs[1] = rng.standard_normal((2, 48000))
    signals = normalized_mono(wavs, [30000, 48000], MHUBERT_RECIPE)
    assert [len(s) for s in signals] == [10000, 16000]
    for s in signals:
        assert abs(s.mean()) < 1e-5 and abs(s.var(ddof=1) - 1) < 1e-4
    chunks, valid = chunk_song(np.ones(25, np.float32), 10)
    assert chunks.shape == (3, 10) and valid == [10, 10, 5] and chunks[2, 5:].sum() == 0
    with pytest.raises(ValueError, match=r"\[batch, 2, samples\]"):
        normalized_mono(wavs[:, 0], [1, 1], MERT_RECIPE)
    with pytest.raises(ValueError, match="does not fit"):
        normalized_mono(wavs, [30000, 50000], MERT_RECIPE)
