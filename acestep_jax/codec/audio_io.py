"""Reading and writing audio files (wav, flac, ogg, mp3) as float32 ``[channels, samples]`` arrays."""

from __future__ import annotations

import io
import os

import numpy as np

from acestep_jax.files import write_atomic

# output format (file extension) → soundfile's major format and subtype, and the HTTP media type
_FORMATS = {
    "wav": ("WAV", "FLOAT", "audio/wav"),
    "flac": ("FLAC", "PCM_24", "audio/flac"),
    "ogg": ("OGG", "VORBIS", "audio/ogg"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
}
FORMATS = tuple(_FORMATS)  # output formats save_audio writes
MEDIA_TYPES = {fmt: media for fmt, (_, _, media) in _FORMATS.items()}


def load_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """``(audio float32 [2, N], sample_rate)``; mono is duplicated to stereo, more channels are refused.

    Reads with soundfile and falls back to librosa (audioread/ffmpeg) for formats
    libsndfile cannot decode. Raises ``FileNotFoundError`` for a missing file and
    ``ValueError`` for an unreadable or empty one.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    import soundfile as sf

    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        audio = data.T
    except Exception as first:  # noqa: BLE001 - try the slower decoder before giving up
        try:
            import warnings

            import librosa

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # librosa warns about its audioread fallback
                audio, sr = librosa.load(path, sr=None, mono=False)
            audio = np.atleast_2d(np.asarray(audio, np.float32))
        except Exception as second:  # noqa: BLE001
            raise ValueError(f"cannot read audio file {path}: {first}; librosa: {second}") from None
    if audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
    elif audio.shape[0] != 2:
        raise ValueError(f"{path} has {audio.shape[0]} channels; only mono or stereo audio is supported")
    if audio.shape[1] == 0:
        raise ValueError(f"audio file {path} holds no samples")
    return np.ascontiguousarray(audio, np.float32), int(sr)


def resolve_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The audio format to write ``path`` in: ``format`` or the file extension, checked to be writable."""
    import soundfile as sf

    path = os.fspath(path)
    fmt = (format or os.path.splitext(path)[1].lstrip(".")).lower()
    if fmt not in _FORMATS:
        raise ValueError(f"unsupported audio format {fmt!r} for {path}; use one of {sorted(_FORMATS)}")
    major, subtype, _ = _FORMATS[fmt]
    if major not in sf.available_formats() or not sf.check_format(major, subtype):
        raise ValueError(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {fmt}; use wav or flac")
    return fmt


def as_channels(audio) -> np.ndarray:
    """``audio [channels, N]`` (or ``[N]``) as float32 ``[channels, N]``; ValueError for other shapes."""
    audio = np.asarray(audio, np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[1] == 0:
        raise ValueError(f"audio must be [channels, samples] with samples > 0, got {audio.shape}")
    return audio


def save_audio(path: str | os.PathLike, audio, sample_rate: int, format: str | None = None) -> str:
    """Write ``audio [channels, N]`` (or ``[N]``) to ``path`` atomically; returns the path.

    ``format`` is ``wav`` (32-bit float), ``flac`` (24-bit), ``ogg`` (Vorbis) or ``mp3``;
    by default it is taken from the file extension. Samples are clipped to [-1, 1]
    for the integer and lossy formats.
    """
    import soundfile as sf

    path = os.fspath(path)
    fmt = resolve_format(path, format)
    major, subtype, _ = _FORMATS[fmt]
    audio = as_channels(audio)
    if fmt != "wav":
        audio = np.clip(audio, -1.0, 1.0)

    def write(tmp):  # encoded in memory, so a failed write is Python's OSError (libsndfile says "System error.")
        encoded = io.BytesIO()
        sf.write(encoded, audio.T, int(sample_rate), format=major, subtype=subtype)
        with open(tmp, "wb") as f:
            f.write(encoded.getbuffer())

    write_atomic(path, write, suffix=f".{fmt}")
    return path
