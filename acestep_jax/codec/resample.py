"""Band-limited polyphase resampling with a Hann-windowed sinc (torchaudio's default method), in JAX.

The filter matches ``torchaudio.functional.resample`` with ``lowpass_filter_width=6``,
``rolloff=0.99`` and ``sinc_interp_hann``: the rates are reduced by their gcd to
``orig → new``; output phase ``j`` of each block of ``new`` samples is a dot product
of a ``2 * width + orig`` sample stretch of the zero-padded input with its own
windowed-sinc filter, and the output is cut to ``ceil(new * length / orig)``
samples. The filter bank is computed once on the host in float64 and applied in
float32 on the device (full float32 precision, no TF32), so :func:`resample` runs
inside jitted programs such as the codec's decode.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=16)
def sinc_resample_kernel(
    orig: int, new: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> tuple[np.ndarray, int]:
    """Filters ``[new, 2 * width + orig]`` (float32) and ``width`` for gcd-reduced rates ``orig → new``."""
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    t = (np.arange(0, -new, -1, dtype=np.float64)[:, None] / new + idx) * base
    t = np.clip(t, -lowpass_filter_width, lowpass_filter_width)
    window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    with np.errstate(divide="ignore", invalid="ignore"):
        sinc = np.where(t == 0, 1.0, np.sin(t) / np.where(t == 0, 1.0, t))
    kernel = sinc * window * (base / orig)
    return kernel.astype(np.float32), width


def resampled_length(num_samples: int, orig_sr: int, new_sr: int) -> int:
    """Samples :func:`resample` returns for ``num_samples`` input samples."""
    if orig_sr == new_sr:
        return num_samples
    g = math.gcd(orig_sr, new_sr)
    return math.ceil(new_sr // g * num_samples / (orig_sr // g))


@functools.partial(jax.jit, static_argnames=("orig_sr", "new_sr", "lowpass_filter_width", "rolloff"))
def resample(
    audio, orig_sr: int, new_sr: int, *, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> jax.Array:
    """Resample ``audio [..., samples]`` from ``orig_sr`` to ``new_sr`` Hz (float32; rates are static)."""
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive integers, got {orig_sr} → {new_sr}")
    audio = jnp.asarray(audio, jnp.float32)
    if orig_sr == new_sr:
        return audio
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    kernel, width = sinc_resample_kernel(orig, new, lowpass_filter_width, rolloff)
    lead, length = audio.shape[:-1], audio.shape[-1]
    taps = kernel.shape[1]  # 2 * width + orig
    frames = length // orig + 1  # filter positions, one every orig samples
    spans = -(-taps // orig)  # blocks of orig samples one filter position covers
    # zero-pad to whole blocks: width in front, the rest (at least width + orig) behind
    x = audio.reshape(-1, length)
    x = jnp.pad(x, ((0, 0), (width, (frames + spans - 1) * orig - width - length)))
    blocks = x.reshape(x.shape[0], frames + spans - 1, orig)
    windows = jnp.concatenate([blocks[:, i : i + frames] for i in range(spans)], axis=-1)[..., :taps]
    out = jnp.einsum("bfk,pk->bfp", windows, jnp.asarray(kernel), precision=jax.lax.Precision.HIGHEST)
    out = out.reshape(x.shape[0], frames * new)[:, : resampled_length(length, orig_sr, new_sr)]
    return out.reshape(*lead, -1)
