"""Log-mel front end against the reference (real parameters)."""

import numpy as np
import pytest

from acestep_jax.codec.logmel import log_mel_spectrogram, num_frames
from tests.helpers import assert_close


def test_logmel_matches_reference(golden):
    g = golden("logmel")
    c = g.config
    mel = log_mel_spectrogram(
        g.io["audio"],
        sample_rate=c["sample_rate"],
        n_fft=c["n_fft"],
        win_length=c["win_length"],
        hop_length=c["hop_length"],
        n_mels=c["n_mels"],
        f_min=c["f_min"],
        f_max=c["f_max"],
    )
    assert_close(mel, g.io["mel"], what="log-mel")
    assert num_frames(g.io["audio"].shape[-1]) == g.io["mel"].shape[-1]


def test_too_short_audio_is_refused():
    with pytest.raises(ValueError, match="too short"):
        log_mel_spectrogram(np.zeros((2, 100), np.float32))
