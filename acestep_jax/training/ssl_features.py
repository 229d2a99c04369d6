"""REPA targets: MERT / mHuBERT features of 48 kHz songs, computed as the reference trainer does.

Per song (``infer_mert_ssl`` / ``infer_mhubert_ssl`` of the reference's ``trainer.py``):
the stereo channels are averaged, resampled 48 kHz → the model's rate with the
torchaudio-exact resampler, and normalised to zero mean and unit (unbiased) variance
over the song's valid samples (``length * rate // 48000``); the valid part is cut into
chunks (5 s for MERT, 30 s for mHuBERT), the last one zero-padded; the model's last
hidden state of each chunk keeps ``(chunk_valid + 319) // 320`` frames (at most the
frames a chunk has: 374 of a full MERT chunk, 1499 of a full mHuBERT one); a song's
chunks are concatenated.

The chunks of a whole batch of songs are packed into calls of one fixed shape
``[chunk_batch, chunk_samples]`` (zero chunks fill the last call), so a single compiled
program serves every song length; each call is sharded over the local devices along
the chunk axis (parameters replicated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from acestep_jax.codec.resample import resample

INPUT_RATE = 48000  # the rate of training audio (the reference dataset's): the codec and the SSL extractors read it
SSL_FRAME_SAMPLES = 320  # the reference's samples per feature frame (the encoders' total stride)
NORM_EPS = 1e-7


@dataclass(frozen=True)
class SSLRecipe:
    """How the reference feeds one encoder: its sample rate and chunk length."""

    name: str  # the REPA target's name (the transformer's ``ssl_names``)
    sample_rate: int
    chunk_seconds: int

    @property
    def chunk_samples(self) -> int:
        return self.sample_rate * self.chunk_seconds

    def valid_samples(self, length_48k: int) -> int:
        return int(length_48k) * self.sample_rate // INPUT_RATE


MERT_RECIPE = SSLRecipe("mert", 24000, 5)
MHUBERT_RECIPE = SSLRecipe("m-hubert", 16000, 30)
RECIPES = {r.name: r for r in (MERT_RECIPE, MHUBERT_RECIPE)}


def normalized_mono(wavs: np.ndarray, lengths: Sequence[int], recipe: SSLRecipe) -> list[np.ndarray]:
    """Per song, the normalised mono signal at the model's rate, cut to its valid samples.

    ``wavs [B, 2, N]`` float32 at 48 kHz (zeros past each ``lengths[b]``).
    """
    wavs = np.asarray(wavs, np.float32)
    if wavs.ndim != 3 or wavs.shape[1] != 2:
        raise ValueError(f"wavs must be [batch, 2, samples] at 48 kHz, got shape {wavs.shape}")
    if len(lengths) != wavs.shape[0]:
        raise ValueError(f"{len(lengths)} lengths for {wavs.shape[0]} songs")
    mono = resample(wavs.mean(axis=1, dtype=np.float32), INPUT_RATE, recipe.sample_rate)
    out = []
    for x, length in zip(mono, lengths):
        valid = recipe.valid_samples(length)
        if valid < 2 or length > wavs.shape[-1]:
            raise ValueError(f"song length {length} does not fit {wavs.shape[-1]} samples or is too short")
        x = x[:valid]
        mean, var = np.mean(x, dtype=np.float32), np.var(x, ddof=1, dtype=np.float32)
        out.append(((x - mean) / np.sqrt(var + np.float32(NORM_EPS))).astype(np.float32))
    return out


def chunk_song(signal: np.ndarray, chunk_samples: int) -> tuple[np.ndarray, list[int]]:
    """``(chunks [n, chunk_samples], valid samples per chunk)``; the last chunk is zero-padded."""
    n = math.ceil(len(signal) / chunk_samples)
    chunks = np.zeros((n, chunk_samples), np.float32)
    valid = []
    for i in range(n):
        piece = signal[i * chunk_samples : (i + 1) * chunk_samples]
        chunks[i, : len(piece)] = piece
        valid.append(len(piece))
    return chunks, valid


class SSLFeatureExtractor:
    """Computes one encoder's REPA targets for batches of songs (see the module docstring).

    ``chunk_batch`` chunks run per call (rounded up to a multiple of the local device count).
    """

    def __init__(self, model, recipe: SSLRecipe, *, chunk_batch: int = 8,
                 devices: Sequence[jax.Device] | None = None):
        if chunk_batch < 1:
            raise ValueError(f"chunk_batch must be at least 1, got {chunk_batch}")
        devices = list(devices if devices is not None else jax.local_devices())
        self.recipe, self.cfg = recipe, model.cfg
        self.chunk_batch = math.ceil(chunk_batch / len(devices)) * len(devices)
        self.model_frames = model.cfg.frames(recipe.chunk_samples)
        if self.model_frames < 1:
            raise ValueError(f"{recipe.name}: a {recipe.chunk_seconds} s chunk is too short for the encoder")
        mesh = Mesh(np.asarray(devices), ("chunks",))
        self._in_sharding = NamedSharding(mesh, P("chunks"))
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, NamedSharding(mesh, P()))
        self._traces = 0

        def run(state, chunks):
            self._traces += 1  # runs once per compiled program (at trace time)
            return nnx.merge(graphdef, state)(chunks).last_hidden_state.astype(jnp.float32)

        self._run = jax.jit(run, out_shardings=self._in_sharding)

    @property
    def width(self) -> int:
        return self.cfg.hidden_size

    def compiled_programs(self) -> int:
        """How many programs the chunk call has compiled (1 after any number of song lengths)."""
        return self._traces

    def __call__(self, wavs: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
        """Features ``[frames, width]`` (float32) of each song of ``wavs [B, 2, N]`` (48 kHz)."""
        signals = normalized_mono(wavs, lengths, self.recipe)
        per_song = [chunk_song(s, self.recipe.chunk_samples) for s in signals]
        chunks = np.concatenate([c for c, _ in per_song])
        hidden = self._hidden(chunks)
        out, start = [], 0
        for c, valid in per_song:
            keep = [min((v + SSL_FRAME_SAMPLES - 1) // SSL_FRAME_SAMPLES, self.model_frames) for v in valid]
            out.append(np.concatenate([hidden[start + i, :k] for i, k in enumerate(keep)]))
            start += len(c)
        return out

    def songs(self, songs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Features of whole songs given as ``[2, samples]`` arrays at 48 kHz (of any lengths)."""
        if not songs:
            return []
        longest = max(s.shape[-1] for s in songs)
        wavs = np.zeros((len(songs), 2, longest), np.float32)
        for i, s in enumerate(songs):
            wavs[i, :, : s.shape[-1]] = s
        return self(wavs, [s.shape[-1] for s in songs])

    def _hidden(self, chunks: np.ndarray) -> np.ndarray:
        """The last hidden state of every chunk, in calls of ``chunk_batch`` chunks."""
        n, b = len(chunks), self.chunk_batch
        padded = np.zeros((math.ceil(n / b) * b, chunks.shape[1]), np.float32)
        padded[:n] = chunks
        outs = [np.asarray(self._run(self._state, jax.device_put(padded[i : i + b], self._in_sharding)))
                for i in range(0, len(padded), b)]
        return np.concatenate(outs)[:n]


def load_extractor(spec, name: str, *, dtype: str = "float32", chunk_batch: int = 8,
                   progress: bool = True) -> SSLFeatureExtractor:
    """The extractor of REPA target ``name`` (``mert``, ``m-hubert``) with the model of ``spec`` (Hub id,
    model folder or converted folder; converted once and cached) in ``dtype`` (parameters and compute)."""
    from acestep_jax.convert.ssl import SSL_COMPONENTS, load_ssl

    if name not in RECIPES:
        raise ValueError(f"unknown REPA target {name!r}; choose from {sorted(RECIPES)}")
    model = load_ssl(spec, SSL_COMPONENTS[name], dtype=dtype, param_dtype=dtype, progress=progress)
    return SSLFeatureExtractor(model, RECIPES[name], chunk_batch=chunk_batch)
