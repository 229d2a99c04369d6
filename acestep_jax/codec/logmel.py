"""Log-mel spectrogram front end of the codec (the vocoder's ``mel_transform``).

Reflect padding of ``(win - hop) / 2`` samples on each side, framing without
centring, a periodic Hann window, magnitude ``sqrt(re² + im² + 1e-6)``, a Slaney
mel filterbank and ``log(max(x, 1e-5))``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Slaney-scale, Slaney-normalised mel filterbank ``[n_fft // 2 + 1, n_mels]`` (float32)."""
    import librosa

    fb = librosa.filters.mel(
        sr=sample_rate,
        n_fft=n_fft,
        n_mels=n_mels,
        fmin=f_min,
        fmax=f_max,
        htk=False,
        norm="slaney",
        dtype=np.float64,
    )
    return np.ascontiguousarray(fb.T.astype(np.float32))


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (``torch.hann_window`` default)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def num_frames(num_samples: int, n_fft: int = 2048, win_length: int = 2048, hop_length: int = 512) -> int:
    """Frames the front end produces for ``num_samples`` samples."""
    padded = num_samples + win_length - hop_length
    return (padded - n_fft) // hop_length + 1


def log_mel_spectrogram(
    audio: jax.Array,
    *,
    sample_rate: int = 44100,
    n_fft: int = 2048,
    win_length: int = 2048,
    hop_length: int = 512,
    n_mels: int = 128,
    f_min: float = 40.0,
    f_max: float = 16000.0,
) -> jax.Array:
    """``audio [..., samples]`` → log-mel ``[..., n_mels, frames]`` (float32)."""
    if win_length != n_fft:
        raise ValueError(f"win_length ({win_length}) must equal n_fft ({n_fft})")
    audio = jnp.asarray(audio, jnp.float32)
    lead = audio.shape[:-1]
    x = audio.reshape(-1, audio.shape[-1])
    lo, hi = (win_length - hop_length) // 2, (win_length - hop_length + 1) // 2
    if x.shape[-1] <= max(lo, hi):
        raise ValueError(f"audio of {x.shape[-1]} samples is too short for reflect padding of {max(lo, hi)}")
    x = jnp.pad(x, ((0, 0), (lo, hi)), mode="reflect")
    frames = num_frames(audio.shape[-1], n_fft, win_length, hop_length)
    if frames < 1:
        raise ValueError(f"audio of {audio.shape[-1]} samples gives no {n_fft}-sample frame")
    idx = np.arange(frames)[:, None] * hop_length + np.arange(n_fft)[None, :]
    windowed = x[:, idx] * jnp.asarray(hann_window(win_length))
    spec = jnp.fft.rfft(windowed, axis=-1)
    mag = jnp.sqrt(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2 + 1e-6)
    fb = jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels, float(f_min), float(f_max)))
    mel = jnp.einsum("bfk,km->bmf", mag, fb, precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, 1e-5)).reshape(*lead, n_mels, frames)
