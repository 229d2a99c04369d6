"""Windowed-sinc resampler: lengths, the polyphase sum, pass-band fidelity and the torchaudio filter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from acestep_jax.codec.resample import resample, resampled_length, sinc_resample_kernel


def polyphase_sum(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """torchaudio's resampling written out in float64: output ``f * new + p`` is filter ``p``
    dotted with the zero-padded input from sample ``f * orig`` on."""
    g = np.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    kernel, width = sinc_resample_kernel(orig, new)
    kernel = kernel.astype(np.float64)
    n = x.shape[-1]
    padded = np.pad(x.astype(np.float64), ((0, 0), (width, width + orig)))
    out = np.zeros((x.shape[0], (n // orig + 1) * new))
    for f in range(n // orig + 1):
        out[:, f * new : (f + 1) * new] = padded[:, f * orig : f * orig + kernel.shape[1]] @ kernel.T
    return out[:, : resampled_length(n, orig_sr, new_sr)]


@pytest.mark.parametrize("n,a,b", [(4411, 44100, 48000), (1001, 48000, 44100), (7, 48000, 44100),
                                   (999, 22050, 44100), (12345, 16000, 44100), (3, 44100, 16000)])
def test_equals_the_polyphase_sum(n, a, b):
    x = np.random.default_rng(n).uniform(-1, 1, (2, n)).astype(np.float32)
    got = np.asarray(resample(x, a, b))
    assert got.shape == (2, resampled_length(n, a, b)) and got.dtype == np.float32
    np.testing.assert_allclose(got, polyphase_sum(x, a, b), rtol=0, atol=1e-5)


def test_lengths_follow_torchaudio():
    for n, a, b in [(53248, 44100, 48000), (57600, 48000, 44100), (1000, 16000, 44100), (7, 48000, 44100)]:
        assert resample(np.zeros(n, np.float32), a, b).shape == (resampled_length(n, a, b),)
    assert resampled_length(53248, 44100, 48000) == 57958


def test_leading_axes_and_inside_jit():
    x = np.random.default_rng(0).standard_normal((2, 3, 500)).astype(np.float32)
    direct = np.asarray(resample(x, 44100, 48000))
    assert direct.shape == (2, 3, resampled_length(500, 44100, 48000))
    np.testing.assert_array_equal(direct[1, 2], np.asarray(resample(x[1, 2], 44100, 48000)))
    inside = jax.jit(lambda y: resample(y * 2.0, 44100, 48000))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(inside), 2 * direct, rtol=1e-6, atol=1e-6)


def test_same_rate_is_identity():
    x = np.random.default_rng(0).standard_normal((2, 100)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(resample(x, 44100, 44100)), x)


@pytest.mark.parametrize("a,b", [(48000, 44100), (44100, 48000), (22050, 44100)])
def test_sine_survives(a, b):
    t = np.arange(a) / a
    y = np.asarray(resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), a, b))
    expect = np.sin(2 * np.pi * 1000 * np.arange(len(y)) / b)
    inner = slice(100, len(y) - 100)
    assert np.abs(y[inner] - expect[inner]).max() < 2e-3


def test_kernel_shape_and_dc_gain():
    kernel, width = sinc_resample_kernel(160, 147)
    assert width == 7 and kernel.shape == (147, 2 * width + 160)
    np.testing.assert_allclose(kernel.sum(axis=1), 1.0, atol=2e-2)


@pytest.mark.parametrize("a,b", [(0, 44100), (44100, -1), (44100.5, 48000)])
def test_bad_rates_are_refused(a, b):
    with pytest.raises(ValueError, match="sample rates"):
        resample(np.zeros(10, np.float32), a, b)
