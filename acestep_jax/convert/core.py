"""Checkpoint conversion core: tensor sources, mapping rules, validation.

A converter is a list of :class:`Rule` objects. Each rule names one target
parameter (a ``/``-joined path in the NNX state) and the reference tensors it is
built from, plus a function combining them (a transpose for a linear layer, a
stack for scanned layers, weight-norm folding, ...). :func:`check_rules`
validates a whole rule set against a source's shapes with :func:`jax.eval_shape`
before anything is read, so a bad checkpoint fails early with one message listing
every missing, unexpected and mis-shaped tensor. :func:`convert` then reads and
converts one target at a time (streaming: only one target's sources are in memory).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Combine = Callable[..., object]


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: lists every problem found."""


def read_json(path: str | os.PathLike, fix: str = "convert or download it again"):
    """A checkpoint's JSON file; a malformed one is a :class:`CheckpointError` naming it and ``fix``."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise CheckpointError(f"{path} is not valid JSON ({getattr(e, 'msg', e)}{where}); {fix}") from None


# ----------------------------------------------------------------------------- transforms
class Transform:
    """An array transform (numpy or traced arrays) with an optional inverse.

    The inverse maps a converted array back to the reference layout, which is what
    exporting a model to the reference's state dict needs. ``part = (i, n)`` marks a
    transform that takes piece ``i`` of ``n`` equal pieces along the source's first
    axis (its inverse returns only that piece).
    """

    def __init__(self, fn: Callable, inverse: Callable | None = None, *, name: str | None = None,
                 part: tuple[int, int] = (0, 1)):
        self.fn, self.inverse, self.part = fn, inverse, part
        self.__name__ = name or getattr(fn, "__name__", "transform")

    def __call__(self, *arrays):
        return self.fn(*arrays)

    def __repr__(self):
        return f"Transform({self.__name__})"


identity = Transform(lambda x: x, lambda x: x, name="identity")

linear_t = Transform(lambda x: x.T, lambda x: x.T, name="linear_t")
"""PyTorch ``Linear.weight`` ``[out, in]`` ↔ kernel ``[in, out]``."""


def _conv_forward(x):
    nd = x.ndim - 2
    return x.transpose(*range(2, 2 + nd), 1, 0)


def _conv_inverse(x):
    nd = x.ndim - 2
    return x.transpose(nd + 1, nd, *range(nd))


conv_t = Transform(_conv_forward, _conv_inverse, name="conv_t")
"""PyTorch conv weight ``[out, in, *k]`` ↔ channels-last kernel ``[*k, in, out]``."""


def _xp(arrays):
    return np if all(isinstance(a, np.ndarray) for a in arrays) else jnp


def fold_weight_norm(g, v, axis: int = 0):
    """A weight-normalised tensor ``g * v / ||v||`` as one weight; the norm runs over every axis but
    ``axis`` (PyTorch ``weight_norm(dim=axis)``). ``(w, w)`` (equal shapes: a plain weight) gives ``w``."""
    if tuple(g.shape) == tuple(v.shape):
        return v
    xp = _xp((g, v))
    v32 = v.astype(xp.float32)
    norm = xp.sqrt(xp.sum(v32 * v32, axis=tuple(i for i in range(v.ndim) if i != axis % v.ndim), keepdims=True))
    return (g.astype(xp.float32) * v32 / norm).astype(v.dtype)


def stack_of(transform: Callable = identity) -> Transform:
    """Combine per-layer tensors by transforming each and stacking on a new leading axis."""

    def combine(*arrays):
        return _xp(arrays).stack([transform(a) for a in arrays])

    inner_inverse = getattr(transform, "inverse", None)
    inverse = None
    if inner_inverse is not None:
        def inverse(y):
            return tuple(inner_inverse(y[i]) for i in range(y.shape[0]))

    name = getattr(transform, "__name__", "transform")
    stacked = Transform(combine, inverse, name=f"stack_of({name})", part=getattr(transform, "part", (0, 1)))
    stacked.item = transform  # lets iter_converted fill the stack one layer at a time
    return stacked


# ----------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """Build ``target`` from ``sources`` with ``combine(*arrays)``.

    A source entry is a key, or a tuple of alternative keys (the first present is
    used and the others are consumed too, e.g. a tied embedding saved under either
    of two names).
    """

    target: str
    sources: tuple[str | tuple[str, ...], ...]
    combine: Combine = identity


def rule(target: str, source: str | tuple[str, ...], transform: Callable = identity) -> Rule:
    """One target from one tensor."""
    return Rule(target, (source,), transform)


def stacked_rule(target: str, sources: Sequence[str], transform: Callable = identity) -> Rule:
    """One scanned target (leading layer axis) from one tensor per layer."""
    return Rule(target, tuple(sources), stack_of(transform))


# ----------------------------------------------------------------------------- sources
class TensorSource:
    """Read-only mapping of tensor names to shapes, dtypes and (lazily) values."""

    def keys(self) -> Iterable[str]:
        raise NotImplementedError

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, key: str) -> np.dtype:
        raise NotImplementedError

    def get(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def __contains__(self, key: str) -> bool:
        return key in set(self.keys())


class DictSource(TensorSource):
    """Tensors already in memory."""

    def __init__(self, tensors: Mapping[str, np.ndarray]):
        self._t = dict(tensors)

    def keys(self):
        return self._t.keys()

    def __contains__(self, key):
        return key in self._t

    def shape(self, key):
        return tuple(self._t[key].shape)

    def dtype(self, key):
        return np.dtype(self._t[key].dtype)

    def get(self, key):
        return np.asarray(self._t[key])


_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class SafetensorsSource(TensorSource):
    """One or more ``.safetensors`` files, read tensor by tensor (no torch needed).

    Headers are parsed up front so shapes are known without reading data; a file
    whose header is unreadable or whose data is shorter than its header claims is
    refused with a :class:`CheckpointError`. A tensor is read with plain file reads into
    its own array (no memory map), so reading a large file holds only the tensors in use.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike]):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self._where: dict[str, str] = {}
        self._meta: dict[str, tuple[tuple[int, ...], np.dtype, int]] = {}  # shape, dtype, file offset
        for path in map(str, paths):
            for key, meta in _read_safetensors_header(path).items():
                if key in self._where:
                    raise CheckpointError(f"tensor {key!r} appears in both {self._where[key]} and {path}")
                self._where[key] = path
                self._meta[key] = meta

    def keys(self):
        return self._meta.keys()

    def __contains__(self, key):
        return key in self._meta

    def shape(self, key):
        return self._meta[key][0]

    def dtype(self, key):
        return self._meta[key][1]

    def get(self, key):
        shape, dtype, offset = self._meta[key]
        out = np.empty(shape, dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        with open(self._where[key], "rb", buffering=0) as f:
            f.seek(offset)
            done = 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    raise CheckpointError(f"{self._where[key]} ended while reading tensor {key!r}")
                done += n
        return out


def _read_safetensors_header(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype, int]]:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > size - 8:
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    out = {}
    data_size = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if end > data_size:
            raise CheckpointError(
                f"{path} is truncated: tensor {key!r} needs bytes up to {end}, file data has {data_size}"
            )
        if info["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
        shape, dtype = tuple(info["shape"]), np.dtype(_ST_DTYPES[info["dtype"]])
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {key!r} spans {end - begin} bytes, its shape {list(shape)} "
                                  f"of {info['dtype']} needs {math.prod(shape) * dtype.itemsize}")
        out[key] = (shape, dtype, 8 + n + begin)
    return out


class ManifestSource(TensorSource):
    """Shapes and dtypes only, from a manifest JSON (``{"tensors": {name: {shape, dtype}}}``)."""

    def __init__(self, path_or_dict):
        data = path_or_dict
        if not isinstance(data, Mapping):
            with open(path_or_dict) as f:
                data = json.load(f)
        self.config = data.get("config", {})
        self._meta = {
            k: (tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in data["tensors"].items()
        }

    def keys(self):
        return self._meta.keys()

    def __contains__(self, key):
        return key in self._meta

    def shape(self, key):
        return self._meta[key][0]

    def dtype(self, key):
        return self._meta[key][1]

    def get(self, key):
        raise CheckpointError("a manifest holds shapes only; it has no tensor data")


# ----------------------------------------------------------------------------- validation
@dataclass
class Plan:
    """A validated conversion: which source keys feed each target."""

    resolved: dict[str, tuple[str, ...]] = field(default_factory=dict)
    shapes: dict[str, jax.ShapeDtypeStruct] = field(default_factory=dict)


def _resolve(entry, source: TensorSource) -> tuple[str | None, tuple[str, ...]]:
    alts = (entry,) if isinstance(entry, str) else tuple(entry)
    present = [k for k in alts if k in source]
    return (present[0] if present else None), tuple(present)


def check_rules(
    rules: Sequence[Rule],
    source: TensorSource,
    targets: Mapping[str, tuple[int, ...]],
    *,
    ignore: Iterable[str] = (),
    what: str = "checkpoint",
) -> Plan:
    """Validate ``rules`` against ``source`` and the model's target shapes.

    Every target must be produced by exactly one rule, every source tensor must be
    consumed (except ``ignore``), and every produced shape must equal the target's.
    Shapes are derived with :func:`jax.eval_shape`, so nothing is read.
    """
    problems: list[str] = []
    plan = Plan()
    consumed: set[str] = set(ignore)
    missing, misshaped = [], []
    seen_targets: set[str] = set()
    for r in rules:
        if r.target in seen_targets:
            problems.append(f"internal: target {r.target} produced by two rules")
        seen_targets.add(r.target)
        keys = []
        for entry in r.sources:
            key, present = _resolve(entry, source)
            consumed.update(present)
            if key is None:
                missing.append(entry if isinstance(entry, str) else " or ".join(entry))
            keys.append(key)
        if r.target not in targets:
            problems.append(f"internal: rule target {r.target} is not a model parameter")
            continue
        if any(k is None for k in keys):
            continue
        structs = [jax.ShapeDtypeStruct(source.shape(k), source.dtype(k)) for k in keys]
        try:
            out = jax.eval_shape(r.combine, *structs)
        except Exception as e:  # noqa: BLE001 - report any shape failure with its key
            misshaped.append(f"{', '.join(keys)}: {[s.shape for s in structs]} cannot form {r.target} ({e})")
            continue
        want = tuple(targets[r.target])
        if tuple(out.shape) != want:
            src_shapes = ", ".join(f"{k} {list(source.shape(k))}" for k in keys[:3])
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            misshaped.append(f"{src_shapes}{more} -> {list(out.shape)}, model expects {list(want)} for {r.target}")
            continue
        plan.resolved[r.target] = tuple(keys)
        plan.shapes[r.target] = jax.ShapeDtypeStruct(want, out.dtype)
    unexpected = sorted(k for k in source.keys() if k not in consumed)  # noqa: SIM118 - a Source, not a dict
    unmapped = sorted(t for t in targets if t not in seen_targets)
    if missing:
        problems.append(listing("missing tensors", list(dict.fromkeys(missing))))
    if unexpected:
        problems.append(listing("unexpected tensors", unexpected))
    if misshaped:
        problems.append(listing("mis-shaped tensors", misshaped))
    if unmapped:
        problems.append(listing("internal: model parameters with no rule", unmapped))
    if problems:
        raise CheckpointError(f"{what} does not match the model:\n" + "\n".join(problems))
    return plan


def listing(title: str, items: Sequence[str], limit: int = 40) -> str:
    """``title (n):`` then up to ``limit`` bulleted items."""
    head = [f"  - {x}" for x in items[:limit]]
    if len(items) > limit:
        head.append(f"  ... and {len(items) - limit} more")
    return f"{title} ({len(items)}):\n" + "\n".join(head)


def iter_converted(
    rules: Sequence[Rule], source: TensorSource, plan: Plan, dtype=None, targets: Iterable[str] | None = None,
    dtypes: Mapping[str, object] | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(target, array)`` one target at a time (numpy, host memory), optionally only ``targets``.

    Arrays are cast to ``dtype`` (or ``dtypes[target]``). A stacked target is filled one
    layer at a time, so its source tensors are never all in memory at once.
    """
    by_target = {r.target: r for r in rules}
    for target in plan.resolved if targets is None else targets:
        keys = plan.resolved[target]
        want = dtypes[target] if dtypes is not None else dtype
        item = getattr(by_target[target].combine, "item", None)
        if item is not None:
            first = np.asarray(item(source.get(keys[0])))
            arr = np.empty((len(keys), *first.shape), want if want is not None else first.dtype)
            arr[0] = first
            del first
            for i, k in enumerate(keys[1:], 1):
                arr[i] = np.asarray(item(source.get(k)))
        else:
            arr = np.asarray(by_target[target].combine(*[source.get(k) for k in keys]))
            if want is not None:
                arr = arr.astype(want, copy=False)
        yield target, arr


def export_tensors(rules: Sequence[Rule], arrays: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Invert ``rules``: the reference tensors from converted ``arrays`` (target path → array).

    A tensor split over several rules (``Transform.part``) is reassembled along its
    first axis; alternative source names are written under the first one.
    """
    pieces: dict[str, dict[int, np.ndarray]] = {}
    counts: dict[str, int] = {}
    for r in rules:
        inverse = getattr(r.combine, "inverse", None)
        if inverse is None:
            raise ValueError(f"cannot export {r.target}: its conversion has no inverse")
        out = inverse(np.asarray(arrays[r.target]))
        out = out if isinstance(out, tuple) else (out,)
        index, count = getattr(r.combine, "part", (0, 1))
        for entry, arr in zip(r.sources, out, strict=True):
            key = entry if isinstance(entry, str) else entry[0]
            pieces.setdefault(key, {})[index] = arr
            counts[key] = count
    result = {}
    for key, parts in pieces.items():
        if sorted(parts) != list(range(counts[key])):
            raise ValueError(f"cannot export {key}: pieces {sorted(parts)} of {counts[key]}")
        whole = parts[0] if counts[key] == 1 else np.concatenate([parts[i] for i in range(counts[key])])
        result[key] = np.ascontiguousarray(whole)
    return result


# ----------------------------------------------------------------------------- NNX state helpers
def _path_str(path) -> str:
    return "/".join(str(p) for p in path)


def param_shapes(model_or_state) -> dict[str, tuple[int, ...]]:
    """``{"a/b/kernel": shape}`` for every variable of an (abstract) model or state."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
    return {_path_str(p): tuple(v.shape) for p, v in nnx.to_flat_state(state)}


def load_flat(model: nnx.Module, arrays: Mapping[str, object]) -> nnx.Module:
    """A copy of ``model`` (abstract or concrete) whose variables take the values ``arrays[path]``."""
    graphdef, state = nnx.split(model)
    flat = nnx.to_flat_state(state)
    missing = [_path_str(p) for p, _ in flat if _path_str(p) not in arrays]
    if missing:
        raise CheckpointError(listing("parameters without values", missing))
    leaves = [(p, v.replace(arrays[_path_str(p)])) for p, v in flat]
    new_state = nnx.from_flat_state(leaves)
    return nnx.merge(graphdef, new_state)


def convert_into(
    abstract_model: nnx.Module,
    rules: Sequence[Rule],
    source: TensorSource,
    *,
    ignore: Iterable[str] = (),
    what: str = "checkpoint",
    progress: bool = False,
) -> nnx.Module:
    """Validate, convert and load ``source`` into an abstract model (:func:`acestep_jax.nn.abstract_model`).

    Each parameter is cast to the dtype of the corresponding abstract parameter.
    """
    from tqdm.auto import tqdm

    state = nnx.state(abstract_model)
    dtypes = {_path_str(p): v.dtype for p, v in nnx.to_flat_state(state)}
    plan = check_rules(rules, source, param_shapes(state), ignore=ignore, what=what)
    arrays = {}
    items = iter_converted(rules, source, plan)
    for target, arr in tqdm(items, total=len(plan.resolved), desc=f"converting {what}",
                            disable=not progress, unit="tensor"):
        arrays[target] = jnp.asarray(arr, dtype=dtypes[target])
    return load_flat(abstract_model, arrays)


def open_source(path: str | os.PathLike | TensorSource) -> TensorSource:
    """A tensor source for a ``.safetensors`` file, a folder of them, or a source as is."""
    if isinstance(path, TensorSource):
        return path
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors")
        )
        if not files:
            raise CheckpointError(f"no .safetensors files in {path}")
        return SafetensorsSource(files)
    return SafetensorsSource(path)
