"""The latent audio codec: stereo audio ↔ DC-AE latents ``[B, 8, 16, T]`` (the reference's ``MusicDCAE``).

Encoding resamples to 44.1 kHz, pads to a multiple of 4096 samples, takes the
log-mel of each channel, maps it from ``[-11, 3]`` to ``[-1, 1]``, runs the DC-AE
encoder and scales the latent as ``(z - shift) * scale``. Decoding inverts the
scaling, runs the DC-AE decoder, maps the mels back and vocodes each stereo
channel, optionally resampling the 44.1 kHz result (on the device, see :mod:`.resample`).

Long audio: ``decode(..., window=frames)`` decodes in fixed-size overlapping
windows, one at a time inside one program (``lax.map``), so memory stays bounded, and
it reproduces the plain decode exactly (up to float reassociation):

- The vocoder and the DC-AE decoder's up-sampling levels are convolutional with a
  bounded receptive field. Every window carries at least that much real context on
  each side (:func:`dcae_context_frames`, :func:`vocoder_context_frames`; the first
  and last windows sit on the true ends, so edge padding is the same as in the
  plain decode) and keeps only the frames it owns.
- The DC-AE decoder's lowest level holds multiscale *linear* attention, whose only
  whole-sequence quantities are two sums, ``Σ k⊗v`` and ``Σ k``. They are
  accumulated window by window over each window's own frames, one pass per
  attention block (each pass feeding the sums found so far to the earlier blocks),
  and the final pass decodes every window with the whole-sequence sums.

Padded batches: ``decode(..., lengths=frames)`` decodes latents padded to any length
``T`` (a duration bucket) with each item's true length as a traced array, so one
program per ``(batch, T, rate)`` serves every mix of lengths. Every convolution (the
DC-AE levels, the vocoder, the resampler's filter) sees zeros past an item's end at its
own resolution, the vocoder's stem repeats its last frame, and the attention sums skip
the frames past it: each item's audio equals its unpadded decode (up to float
reassociation). Windows then sit at positions fixed by ``T``, so neither mode compiles
for a new length inside a padded shape.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from acestep_jax.codec.config import DCAEConfig, VocoderConfig
from acestep_jax.codec.dcae import DCAE
from acestep_jax.codec.logmel import log_mel_spectrogram
from acestep_jax.codec.resample import resample, resampled_length
from acestep_jax.codec.vocoder import Vocoder
from acestep_jax.nn import abstract_model
from acestep_jax.nn.layers import mask_time

SAMPLE_RATE = 44100  # the codec's own rate
OUTPUT_SAMPLE_RATE = 48000  # the rate of generated files unless asked otherwise (the reference writes 48 kHz)
LATENT_CHANNELS = 8  # latents are [B, LATENT_CHANNELS, LATENT_HEIGHT, frames]
LATENT_HEIGHT = 16
HOP = 512
SCALE_FACTOR = 0.1786
SHIFT_FACTOR = -1.9091
MIN_MEL = -11.0
MAX_MEL = 3.0
LATENT_DOWNSAMPLE = 8  # DC-AE time compression
FRAME_SAMPLES = LATENT_DOWNSAMPLE * HOP  # 44.1 kHz samples per latent frame


def seconds_to_frames(seconds: float) -> int:
    """Latent frames for ``seconds`` of audio, truncated as the reference's sampling does."""
    return int(seconds * SAMPLE_RATE / HOP / LATENT_DOWNSAMPLE)


def frames_to_seconds(frames: int) -> float:
    """Seconds of 44.1 kHz audio that ``frames`` latent frames decode to."""
    return frames * FRAME_SAMPLES / SAMPLE_RATE


def latent_frames(num_samples: int, sample_rate: int = SAMPLE_RATE, downsample: int = LATENT_DOWNSAMPLE) -> int:
    """Latent frames :meth:`MusicCodec.encode` produces for ``num_samples`` samples at ``sample_rate``."""
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    n = resampled_length(int(num_samples), int(sample_rate), SAMPLE_RATE)
    return math.ceil(n / (downsample * HOP))


def latent_lengths_for(audio_lengths, sample_rate: int, downsample: int = LATENT_DOWNSAMPLE) -> np.ndarray:
    """The reference's reported latent lengths: ``floor(len / sr * 44100 / 512 / 8)`` in float32 steps."""
    x = np.asarray(audio_lengths, np.float32) / np.float32(sample_rate)
    x = x * np.float32(SAMPLE_RATE) / np.float32(HOP) / np.float32(downsample)
    return np.floor(x).astype(np.int64)


def dcae_context_frames(cfg: DCAEConfig) -> int:
    """Latent frames of context each side that make a windowed DC-AE decode exact.

    The receptive field of everything but the attention sums: the input conv and
    the lowest level's convolutions (3×3 convs, the multiscale depthwise convs),
    then the up-sampling levels, whose convolutions count at their own resolution.
    """
    n_levels = len(cfg.decoder_block_out_channels)
    total = 1.0  # input conv
    for kind, scales in zip(
        (cfg.decoder_block_types[-1],) * cfg.decoder_layers_per_block[-1],
        (cfg.decoder_qkv_multiscales[-1],) * cfg.decoder_layers_per_block[-1],
    ):
        total += 2 if kind == "ResBlock" else max(scales, default=1) // 2 + 1
    for i in range(n_levels - 1):
        if cfg.decoder_block_types[i] != "ResBlock" and cfg.decoder_layers_per_block[i]:
            raise ValueError("windowed decoding needs convolution-only decoder levels above the lowest one")
        total += (1 + 2 * cfg.decoder_layers_per_block[i]) / 2 ** (n_levels - 1 - i)
    total += 1 / 2 ** (n_levels - 1)  # output conv
    return math.ceil(total) + 1


def vocoder_context_frames(cfg: VocoderConfig) -> int:
    """Mel frames of context each side that make a windowed vocoder exact (a bound on its receptive field)."""
    frames = 3 + sum(cfg.depths) * (cfg.kernel_sizes[0] // 2) + cfg.pre_conv_kernel_size // 2
    rate = 1
    res = max(
        sum((k - 1) // 2 * d + (k - 1) // 2 for d in dil)
        for k, dil in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)
    )
    for u, k in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
        frames += math.ceil(k / u) / rate  # transposed conv, in input samples of this stage
        rate *= u
        frames += res / rate
    frames += cfg.post_conv_kernel_size // 2 / rate
    return math.ceil(frames) + 1


WINDOW_MULTIPLE = 16  # window sizes are multiples of it: XLA:GPU's Triton GEMMs refuse other row counts


def aligned_context(core: int, context: int, multiple: int = WINDOW_MULTIPLE) -> int:
    """The least context of at least ``context`` frames that makes a window of ``core + 2 * context``
    frames a multiple of ``multiple`` (``context`` itself when ``core`` is odd). More context than
    the receptive field changes nothing in the result."""
    extra = -(core + 2 * context) % multiple
    return context + extra // 2 if extra % 2 == 0 else context


def _windows(total: int, core: int, context: int):
    """``(start, keep_from, keep_to)`` per window of ``core + 2 * context`` frames covering ``[0, total)``,
    ``context`` first :func:`aligned_context`."""
    context = aligned_context(core, context)
    size = core + 2 * context
    out = []
    for s in range(0, total, core):
        start = min(max(s - context, 0), total - size)
        out.append((start, s - start, min(s + core, total) - start))
    return out, size


@functools.partial(nnx.jit, static_argnames=("sample_rate",))
def _encode_mel(codec: MusicCodec, audio, sample_rate: int):
    audio = resample(audio, sample_rate, SAMPLE_RATE)
    block = codec.downsample * HOP
    audio = jnp.pad(audio, ((0, 0), (0, 0), (0, -audio.shape[-1] % block)))
    v = codec.vocoder.config
    mel = log_mel_spectrogram(
        audio,
        sample_rate=v.sampling_rate,
        n_fft=v.n_fft,
        win_length=v.win_length,
        hop_length=v.hop_length,
        n_mels=v.n_mels,
        f_min=v.f_min,
        f_max=v.f_max,
    )
    mel = (mel - codec.min_mel) / (codec.max_mel - codec.min_mel)
    mel = (mel - 0.5) / 0.5
    z = codec.dcae.encode(mel).astype(jnp.float32)
    return (z - codec.shift_factor) * codec.scale_factor


def _unscale(codec, latents):
    return (latents.astype(jnp.float32) / codec.scale_factor + codec.shift_factor).transpose(0, 2, 3, 1)


def _denorm(codec, mel):
    return (mel.astype(jnp.float32) * 0.5 + 0.5) * (codec.max_mel - codec.min_mel) + codec.min_mel


def _finish(codec: MusicCodec, audio, n, n_out, sample_rate: int):
    """Resample ``audio [B, 2, samples]``, item ``i`` cut to ``n[i]`` latent frames before and
    to ``n_out[i]`` samples after (zeros past them)."""
    audio = resample(mask_time(audio, None if n is None else n * codec.downsample * HOP, 2), SAMPLE_RATE, sample_rate)
    return mask_time(audio, n_out, 2)


@functools.partial(nnx.jit, static_argnames=("sample_rate",))
def _decode_plain(codec: MusicCodec, latents, n, n_out, sample_rate: int):
    mel = _denorm(codec, codec.dcae.decoder(_unscale(codec, latents), n))  # [B, H, W, 2]
    b, h, w, c = mel.shape
    mel = mel.transpose(0, 3, 2, 1).reshape(b * c, w, h)  # one vocoder item per stereo channel
    nv = None if n is None else jnp.repeat(n * codec.downsample, c)
    return _finish(codec, codec.vocoder.decode_channels_last(mel, nv).reshape(b, c, -1), n, n_out, sample_rate)


def _local(n, starts, size: int):
    """Lengths ``n [B]`` inside windows of ``size`` frames at ``starts`` (``[windows, B]``)."""
    return None if n is None else jnp.clip(n[None, :] - jnp.asarray(starts)[:, None], 0, size)


def _stack(x, spans, size: int, axis: int):
    return jnp.stack([jax.lax.slice_in_dim(x, s, s + size, axis=axis) for s, _, _ in spans])


def _join(parts, spans, scale: int, axis: int):
    """The frames each window owns (``scale`` output samples per input frame), in order."""
    return jnp.concatenate(
        [jax.lax.slice_in_dim(parts[j], a * scale, e * scale, axis=axis) for j, (_, a, e) in enumerate(spans)],
        axis=axis,
    )


@functools.partial(nnx.jit, static_argnames=("window", "vocoder_window", "sample_rate"))
def _decode_windowed(codec: MusicCodec, latents, n, n_out, window: int, vocoder_window: int, sample_rate: int):
    """The windowed decode (see the module doc) as one program; windows run one at a time (``lax.map``)."""
    decoder, f = codec.dcae.decoder, codec.downsample
    z = _unscale(codec, latents)  # [B, H, T, latent_channels]
    spans, size = _windows(z.shape[2], window, dcae_context_frames(codec.dcae.config))
    if size >= z.shape[2]:
        mel = _denorm(codec, decoder(z, n))
    else:
        zs, local = _stack(z, spans, size, 2), _local(n, [s for s, _, _ in spans], size)
        own = np.stack([(np.arange(size) >= a) & (np.arange(size) < e) for _, a, e in spans])
        own = jnp.asarray(own, jnp.float32)  # the frames each window owns
        stats = ()  # per attention block, its sums over every window's own frames
        for i in range(decoder.num_global_attention):
            parts = jax.lax.map(lambda w, i=i, stats=stats: decoder.global_stage(w[0], stats, i, w[1], w[2]),
                                (zs, own, local))
            stats += (jax.tree.map(lambda a: a.sum(0), parts),)
        mels = jax.lax.map(
            lambda w: _denorm(codec, decoder.local_stage(decoder.global_stage(w[0], stats, n=w[1]), w[1])),
            (zs, local),
        )
        mel = _join(mels, spans, f, 2)
    b, h, w, c = mel.shape
    mel = mel.transpose(0, 3, 2, 1).reshape(b * c, w, h)  # one vocoder item per stereo channel
    nv = None if n is None else jnp.repeat(n * f, c)
    spans, size = _windows(w, vocoder_window, vocoder_context_frames(codec.vocoder.config))
    if size >= w:
        audio = codec.vocoder.decode_channels_last(mel, nv)
    else:
        parts = jax.lax.map(
            lambda v: codec.vocoder.decode_channels_last(v[0], v[1]),
            (_stack(mel, spans, size, 1), _local(nv, [s for s, _, _ in spans], size)),
        )
        audio = _join(parts, spans, HOP, 1)
    return _finish(codec, audio.reshape(b, c, -1), n, n_out, sample_rate)


class MusicCodec(nnx.Module):
    """``.dcae`` (:class:`DCAE`) and ``.vocoder`` (:class:`Vocoder`) plus the reference's constants."""

    def __init__(
        self,
        dcae_cfg: DCAEConfig,
        vocoder_cfg: VocoderConfig,
        *,
        rngs: nnx.Rngs | None,
        scale_factor: float = SCALE_FACTOR,
        shift_factor: float = SHIFT_FACTOR,
        min_mel: float = MIN_MEL,
        max_mel: float = MAX_MEL,
    ):
        if vocoder_cfg.n_mels != vocoder_cfg.input_channels:
            raise ValueError(
                f"vocoder n_mels ({vocoder_cfg.n_mels}) must equal input_channels "
                f"({vocoder_cfg.input_channels})"
            )
        if vocoder_cfg.sampling_rate != SAMPLE_RATE or vocoder_cfg.hop_length != HOP:
            raise ValueError(f"the codec works at {SAMPLE_RATE} Hz with hop {HOP}")
        self.dcae = DCAE(dcae_cfg, rngs=rngs)
        self.vocoder = Vocoder(vocoder_cfg, rngs=rngs)
        self.scale_factor, self.shift_factor = scale_factor, shift_factor
        self.min_mel, self.max_mel = min_mel, max_mel

    @classmethod
    def from_parts(cls, dcae: DCAE, vocoder: Vocoder, **constants) -> MusicCodec:
        """A codec around already built (e.g. converted) ``dcae`` and ``vocoder`` modules."""
        codec = abstract_model(lambda r: cls(dcae.config, vocoder.config, rngs=r, **constants))
        codec.dcae, codec.vocoder = dcae, vocoder
        return codec

    @property
    def downsample(self) -> int:
        return self.dcae.config.downsample_factor

    def encode(
        self, audio, sample_rate: int = SAMPLE_RATE, audio_lengths=None
    ) -> tuple[jax.Array, np.ndarray]:
        """``audio [B, 2, N]`` at ``sample_rate`` → ``(latents [B, 8, 16, T], latent_lengths [B])``.

        ``audio_lengths`` (default: ``N`` for every item) only feeds the reported lengths.
        """
        audio = np.asarray(audio, np.float32)
        if audio.ndim != 3 or audio.shape[1] != self.dcae.config.in_channels:
            raise ValueError(f"audio must be [B, {self.dcae.config.in_channels}, samples], got {audio.shape}")
        if audio.shape[-1] == 0:
            raise ValueError("audio is empty")
        lengths = (
            np.full(audio.shape[0], audio.shape[-1]) if audio_lengths is None else np.asarray(audio_lengths)
        )
        latents = _encode_mel(self, jnp.asarray(audio), sample_rate)
        return latents, latent_lengths_for(lengths, sample_rate, self.downsample)

    def decode(
        self,
        latents,
        sample_rate: int = SAMPLE_RATE,
        *,
        window: int | None = None,
        vocoder_window: int | None = None,
        lengths=None,
    ) -> np.ndarray:
        """``latents [B, 8, 16, T]`` → float32 audio ``[B, 2, T * 4096 (resampled)]`` at ``sample_rate``.

        ``window`` (latent frames) decodes in overlapping windows of that many frames
        (plus context); ``vocoder_window`` (mel frames, default ``8 * window``) sets
        the vocoder's windows. Both give the plain decode's result (see the module doc).
        ``lengths [B]`` (latent frames, ``1..T``): item ``i`` is decoded as its first
        ``lengths[i]`` frames alone and is zero past them; the programs depend on ``T``
        only. Everything, resampling included, runs on the device (the plain decode as
        one program); only the finished audio is copied to the host.
        """
        latents = jnp.asarray(latents)
        if latents.ndim != 4 or latents.shape[1] != self.dcae.config.latent_channels:
            raise ValueError(
                f"latents must be [B, {self.dcae.config.latent_channels}, H, T], got {latents.shape}"
            )
        n = n_out = None
        if lengths is not None:
            lengths = np.asarray(lengths, np.int64).reshape(-1)
            if lengths.shape[0] != latents.shape[0] or lengths.min() < 1 or lengths.max() > latents.shape[-1]:
                raise ValueError(
                    f"lengths must be {latents.shape[0]} values in 1..{latents.shape[-1]}, got {lengths.tolist()}"
                )
            n = jnp.asarray(lengths, jnp.int32)
            n_out = jnp.asarray([resampled_length(int(f) * self.downsample * HOP, SAMPLE_RATE, sample_rate)
                                 for f in lengths], jnp.int32)
        if window is None:
            audio = _decode_plain(self, latents, n, n_out, sample_rate)
        else:
            if window <= 0:
                raise ValueError(f"window must be a positive number of latent frames, got {window}")
            vw = 8 * window if vocoder_window is None else int(vocoder_window)
            audio = _decode_windowed(self, latents, n, n_out, int(window), vw, sample_rate)
        return np.asarray(audio, np.float32)


def codec_in_dtype(codec: MusicCodec, dtype: str) -> MusicCodec:
    """A copy of ``codec`` whose DC-AE and vocoder compute and store their weights in ``dtype``
    (what the reference's ``MusicDCAE.to(dtype)`` does). Norm statistics, the linear-attention
    sums, the mel (de)normalisation and the audio stay float32 whatever ``dtype`` is."""
    d_cfg = dataclasses.replace(codec.dcae.config, dtype=dtype, param_dtype=dtype)
    v_cfg = dataclasses.replace(codec.vocoder.config, dtype=dtype, param_dtype=dtype)
    constants = {k: getattr(codec, k) for k in ("scale_factor", "shift_factor", "min_mel", "max_mel")}
    graphdef, target = nnx.split(abstract_model(lambda r: MusicCodec(d_cfg, v_cfg, rngs=r, **constants)))
    state = jax.tree.map(lambda t, x: jnp.asarray(x, t.dtype), target, nnx.state(codec))
    return nnx.merge(graphdef, state)
