"""Windowed-sinc resampler: lengths, pass-band fidelity and the torchaudio filter."""

import numpy as np
import pytest

from acestep_jax.codec.resample import resample, resampled_length, sinc_resample_kernel


def test_lengths_follow_torchaudio():
    for n, a, b in [(53248, 44100, 48000), (57600, 48000, 44100), (1000, 16000, 44100), (7, 48000, 44100)]:
        assert resample(np.zeros(n, np.float32), a, b).shape == (resampled_length(n, a, b),)
    assert resampled_length(53248, 44100, 48000) == 57958


def test_same_rate_is_identity():
    x = np.random.default_rng(0).standard_normal((2, 100)).astype(np.float32)
    np.testing.assert_array_equal(resample(x, 44100, 44100), x)


@pytest.mark.parametrize("a,b", [(48000, 44100), (44100, 48000), (22050, 44100)])
def test_sine_survives(a, b):
    t = np.arange(a) / a
    y = resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), a, b)
    expect = np.sin(2 * np.pi * 1000 * np.arange(len(y)) / b)
    inner = slice(100, len(y) - 100)
    assert np.abs(y[inner] - expect[inner]).max() < 2e-3


def test_kernel_shape_and_dc_gain():
    kernel, width = sinc_resample_kernel(160, 147)
    assert width == 7 and kernel.shape == (147, 2 * width + 160)
    np.testing.assert_allclose(kernel.sum(axis=1), 1.0, atol=2e-2)


def test_bad_rates_are_refused():
    with pytest.raises(ValueError, match="sample rates"):
        resample(np.zeros(10, np.float32), 0, 44100)
