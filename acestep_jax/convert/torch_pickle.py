"""PyTorch ``torch.save`` checkpoints (``pytorch_model.bin``) read without torch, and safely.

The zip format (torch >= 1.6) holds ``<name>/data.pkl`` (a pickle of the state dict
whose tensors point at storages by key) and ``<name>/data/<key>`` (each storage's raw
bytes). The pickle is read by an unpickler that only rebuilds tensors: the globals it
resolves are the tensor-rebuild function, the typed storage classes and
``collections.OrderedDict``; any other object (a function call such as ``os.system``,
a class) is refused with a :class:`CheckpointError` before anything is called. Tensor
data is read lazily, one tensor at a time.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from acestep_jax.convert.core import CheckpointError, TensorSource

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": jnp.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass(frozen=True)
class TensorRef:
    """Where a tensor's elements live: a storage, an element offset, a shape and element strides."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def extent(self) -> int:
        """Elements of the storage the tensor reaches (0 for an empty tensor)."""
        if any(s == 0 for s in self.shape):
            return 0
        return self.offset + 1 + sum((n - 1) * st for n, st in zip(self.shape, self.stride))


def _rebuild_tensor(storage, offset, shape, stride, *_unused) -> TensorRef:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor whose storage is not a checkpoint storage")
    return TensorRef(storage, int(offset), tuple(int(n) for n in shape), tuple(int(s) for s in stride))


def _rebuild_parameter(data, *_unused):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(np.dtype(dt)) for name, dt in STORAGE_DTYPES.items()},
}


class _TensorOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, where: str):
        import io

        super().__init__(io.BytesIO(data))
        self.where = where

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self.where}: refusing to load: the pickle references {module}.{name}, which is not "
                "a tensor (only tensors are read from PyTorch checkpoints; prefer safetensors)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.where}: unexpected persistent id {pid!r} in the pickle")
        return _Storage(str(pid[2]), pid[1].dtype)


def _read_state_dict(path: str) -> tuple[dict[str, TensorRef], str, bool]:
    """``(tensors, zip folder prefix, big_endian)`` of one zip checkpoint; nothing is executed."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a zip-format PyTorch checkpoint (torch >= 1.6); "
                              "convert it to safetensors first")
    with zipfile.ZipFile(path) as z:
        pickles = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one <name>/data.pkl in the zip, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(z.namelist())
        big_endian = (prefix + "byteorder" in names and z.read(prefix + "byteorder").strip() == b"big")
        try:
            obj = _TensorOnlyUnpickler(z.read(pickles[0]), path).load()
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - any malformed pickle is reported the same way
            raise CheckpointError(f"{path}: unreadable pickle ({type(e).__name__}: {e})") from None
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, TensorRef)
                                                for k, v in obj.items()):
            raise CheckpointError(f"{path} does not hold a flat state dict of named tensors")
        for key, ref in obj.items():
            entry = f"{prefix}data/{ref.storage.key}"
            if entry not in names:
                raise CheckpointError(f"{path}: tensor {key!r} points at a missing storage {entry}")
            available = z.getinfo(entry).file_size // ref.storage.dtype.itemsize
            if ref.extent > available:
                raise CheckpointError(f"{path} is truncated: tensor {key!r} needs {ref.extent} elements of "
                                      f"storage {ref.storage.key}, which holds {available}")
    return dict(obj), prefix, big_endian


class TorchBinSource(TensorSource):
    """One or more zip-format PyTorch checkpoints, validated up front and read tensor by tensor."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike]):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self._refs: dict[str, tuple[TensorRef, str, str, bool]] = {}
        for path in map(os.fspath, paths):
            refs, prefix, big_endian = _read_state_dict(path)
            for key, ref in refs.items():
                if key in self._refs:
                    raise CheckpointError(f"tensor {key!r} appears in both {self._refs[key][1]} and {path}")
                self._refs[key] = (ref, path, prefix, big_endian)

    def keys(self):
        return self._refs.keys()

    def __contains__(self, key):
        return key in self._refs

    def shape(self, key):
        return self._refs[key][0].shape

    def dtype(self, key):
        return self._refs[key][0].storage.dtype

    def get(self, key):
        ref, path, prefix, big_endian = self._refs[key]
        dtype = ref.storage.dtype
        with zipfile.ZipFile(path) as z:
            raw = z.read(f"{prefix}data/{ref.storage.key}")
        flat = np.frombuffer(raw, dtype.newbyteorder(">") if big_endian else dtype)
        if math.prod(ref.shape) == 0:
            return np.zeros(ref.shape, dtype)
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset:], shape=ref.shape, strides=[s * dtype.itemsize for s in ref.stride], writeable=False
        )
        return np.ascontiguousarray(view, dtype=dtype)
