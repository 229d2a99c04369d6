"""The audio codec: log-mel front end, DC-AE, vocoder, resampling, audio files."""

from acestep_jax.codec.audio_io import load_audio, save_audio
from acestep_jax.codec.codec import MusicCodec, frames_to_seconds, latent_frames, seconds_to_frames
from acestep_jax.codec.config import DCAEConfig, VocoderConfig
from acestep_jax.codec.dcae import DCAE
from acestep_jax.codec.logmel import log_mel_spectrogram
from acestep_jax.codec.resample import resample
from acestep_jax.codec.vocoder import Vocoder

__all__ = [
    "DCAE",
    "DCAEConfig",
    "MusicCodec",
    "Vocoder",
    "VocoderConfig",
    "frames_to_seconds",
    "latent_frames",
    "load_audio",
    "log_mel_spectrogram",
    "resample",
    "save_audio",
    "seconds_to_frames",
]
