"""Training records: one preprocessed example per ArrayRecord entry.

An example is a flat dict of numpy arrays and strings:

* ``latents`` float32 ``[8, 16, T]`` — DC-AE latents of the clip (scaled, as the codec returns them);
* ``text_states`` ``[Lt, D_text]`` — UMT5 states of the prompt (``Lt`` = its token count);
* ``lyric_ids`` int32 ``[Ll]`` — lyric token ids (``[0]`` for no lyrics);
* ``speaker`` float32 ``[512]`` — speaker embedding (zeros when none, as the reference);
* optional ``ssl/<name>`` ``[S, D_ssl]`` — SSL features for REPA, one per ``ssl_names`` entry;
* ``key``, ``prompt``, ``lyrics`` — strings kept for logging and evaluation.

Each entry is an uncompressed ``.npz`` payload, so a record reads with numpy alone.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterable, Mapping

import numpy as np

from acestep_jax.codec.codec import LATENT_CHANNELS, LATENT_HEIGHT

REQUIRED = ("latents", "text_states", "lyric_ids", "speaker")
STRINGS = ("key", "prompt", "lyrics")
SSL_PREFIX = "ssl/"
PROMPT_PREFIX = "text_states/"  # more prompt variants' states: text_states/1, text_states/2, ...
PROMPT_WEIGHTS = "prompt_weights"  # [variants]: how likely each of text_states, text_states/1, ... is drawn
WEIGHT = "weight"  # how many times the dataset holds the song (a sampling weight)


def validate_example(ex: Mapping, where: str = "example") -> None:
    """Raise ``ValueError`` naming the field when ``ex`` is not a well-formed example."""
    missing = [k for k in REQUIRED if k not in ex]
    if missing:
        raise ValueError(f"{where}: missing fields {missing}")
    lat = np.asarray(ex["latents"])
    if lat.ndim != 3 or lat.shape[:2] != (LATENT_CHANNELS, LATENT_HEIGHT) or lat.shape[2] < 1:
        raise ValueError(f"{where}: latents must be [{LATENT_CHANNELS}, {LATENT_HEIGHT}, T>0], got {list(lat.shape)}")
    if np.asarray(ex["text_states"]).ndim != 2:
        raise ValueError(f"{where}: text_states must be [tokens, width], got {list(np.shape(ex['text_states']))}")
    if np.asarray(ex["lyric_ids"]).ndim != 1 or len(ex["lyric_ids"]) < 1:
        raise ValueError(f"{where}: lyric_ids must be a non-empty 1-D id list")
    if np.asarray(ex["speaker"]).ndim != 1:
        raise ValueError(f"{where}: speaker must be a vector")
    width = np.shape(ex["text_states"])[-1]
    variants = 1
    for k, v in ex.items():
        if k.startswith(SSL_PREFIX) and np.asarray(v).ndim != 2:
            raise ValueError(f"{where}: {k} must be [frames, width], got {list(np.shape(v))}")
        if k.startswith(PROMPT_PREFIX):
            variants += 1
            if np.ndim(v) != 2 or np.shape(v)[-1] != width:
                raise ValueError(f"{where}: {k} must be [tokens, {width}] like text_states, got {list(np.shape(v))}")
    if PROMPT_WEIGHTS in ex and np.shape(ex[PROMPT_WEIGHTS]) != (variants,):
        raise ValueError(f"{where}: {PROMPT_WEIGHTS} must hold {variants} weights (one per prompt variant)")
    if WEIGHT in ex and (np.ndim(ex[WEIGHT]) != 0 or int(ex[WEIGHT]) < 1):
        raise ValueError(f"{where}: {WEIGHT} must be a positive integer")


def encode_example(ex: Mapping) -> bytes:
    """Serialise one example (validated) to bytes."""
    validate_example(ex)
    arrays = {}
    for k, v in ex.items():
        if k in STRINGS:
            arrays[k] = np.asarray(str(v))
        else:
            arrays[k] = np.asarray(v)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_example(data: bytes) -> dict:
    """Inverse of :func:`encode_example`."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    for k in STRINGS:
        if k in out:
            out[k] = str(out[k])
    return out


def write_records(path: str | os.PathLike, examples: Iterable[Mapping]) -> int:
    """Write examples to an ArrayRecord file atomically (temp file, then rename); returns the count."""
    from array_record.python.array_record_module import ArrayRecordWriter

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    writer = ArrayRecordWriter(tmp, "group_size:1")
    n = 0
    try:
        for i, ex in enumerate(examples):
            try:
                writer.write(encode_example(ex))
            except ValueError as e:
                raise ValueError(f"{path}: example {i}: {e}") from None
            n += 1
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):  # already failing; the original error matters
            writer.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return n


def record_files(path: str | os.PathLike) -> list[str]:
    """The ``.array_record`` files of a path (a file, or every such file in a folder, sorted)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".array_record"))
        if files:
            return files
        raise FileNotFoundError(f"no .array_record files in {path}")
    raise FileNotFoundError(f"training data not found: {path}")


class RecordSource:
    """Random-access source of decoded examples over one or more ArrayRecord files (grain-compatible)."""

    def __init__(self, path: str | os.PathLike):
        import grain

        self.files = record_files(path)
        self._source = grain.sources.ArrayRecordDataSource(self.files)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        return decode_example(self._source[index])

    def weights(self) -> np.ndarray:
        """Each example's sampling weight (its ``weight`` field, else 1); reads every record once."""
        return np.asarray([int(self[i].get(WEIGHT, 1)) for i in range(len(self))], np.int64)

    def __repr__(self) -> str:
        return f"RecordSource({self.files!r}, {len(self)} examples)"
