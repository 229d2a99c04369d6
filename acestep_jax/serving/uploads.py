"""Source audio uploaded to the server (``POST /v1/uploads``), for repaint, extend, edit and audio2audio.

An upload is decoded and checked when it arrives (channels, length, sample rate), stored
under ``<state dir>/uploads/<id>.wav`` (float32, as decoded) with a ``<id>.json`` record of
what was checked, and named by a random id: requests give that id as ``src_upload``, never a
path. Uploads are deleted with the last job that uses them, or once ``ttl_s`` has passed
without a job holding them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from acestep_jax.codec.audio_io import save_audio
from acestep_jax.files import write_json
from acestep_jax.sampling.params import MAX_SECONDS
from acestep_jax.serving.requests import UPLOAD_ID

log = logging.getLogger(__name__)

MIN_RATE, MAX_RATE = 8000, 192000


class UploadError(ValueError):
    """An upload that is refused; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    id: str
    seconds: float
    sample_rate: int
    channels: int
    created_at: float


class UploadStore:
    """Uploads under ``root`` (created if missing): at most ``max_bytes`` each, kept ``ttl_s`` unless a job holds them."""

    def __init__(self, root: str | os.PathLike, max_bytes: int = 64 << 20, ttl_s: float = 24 * 3600):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.ttl_s = max_bytes, ttl_s

    def path(self, upload_id: str) -> Path | None:
        """The stored audio of ``upload_id``, or ``None`` when there is none."""
        if not UPLOAD_ID.fullmatch(upload_id):
            return None
        path = self.root / f"{upload_id}.wav"
        return path if path.is_file() else None

    def add(self, data: bytes) -> Upload:
        """Decode, check and store ``data`` (an audio file's bytes); :class:`UploadError` when refused."""
        import soundfile as sf

        if len(data) > self.max_bytes:
            raise UploadError(413, f"the upload exceeds {self.max_bytes} bytes")
        try:
            audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except Exception as e:  # noqa: BLE001 - anything soundfile cannot decode is "not audio"
            raise UploadError(415, f"the upload is not an audio file soundfile can read (wav, flac, ogg, mp3): {e}")
        frames, channels = audio.shape
        if channels not in (1, 2):
            raise UploadError(422, f"the upload has {channels} channels; mono or stereo audio is taken")
        if not MIN_RATE <= rate <= MAX_RATE:
            raise UploadError(422, f"the upload's sample rate is {rate} Hz; {MIN_RATE}-{MAX_RATE} Hz is taken")
        seconds = frames / rate
        if not 0 < seconds <= MAX_SECONDS:
            raise UploadError(422, f"the upload is {seconds:.1f} s long; up to {MAX_SECONDS:g} s is taken")
        upload = Upload(secrets.token_hex(16), seconds, int(rate), channels, time.time())
        save_audio(self.root / f"{upload.id}.wav", audio.T, rate, format="wav")
        write_json(self.root / f"{upload.id}.json", asdict(upload))
        return upload

    def info(self, upload_id: str) -> Upload | None:
        try:
            return Upload(**json.loads((self.root / f"{upload_id}.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def delete(self, upload_id: str) -> None:
        for suffix in (".wav", ".json"):
            (self.root / f"{upload_id}{suffix}").unlink(missing_ok=True)

    def sweep(self, held: set[str], now: float | None = None) -> int:
        """Delete the uploads older than ``ttl_s`` that no job in ``held`` uses; returns how many."""
        now = time.time() if now is None else now
        gone = 0
        for record in self.root.glob("*.json"):
            upload = self.info(record.stem)
            if upload is None or (upload.id not in held and now - upload.created_at > self.ttl_s):
                self.delete(record.stem)
                gone += 1
        for tmp in self.root.glob(".tmp-*"):  # a write killed before its rename
            tmp.unlink(missing_ok=True)
        return gone
