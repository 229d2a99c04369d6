"""The converted-checkpoint format: one orbax parameter checkpoint per model component.

A component folder holds ``config.json`` (the component's config, JAX options
included) and ``params/``: the NNX parameters keyed by path, saved with orbax in
shards of about :data:`SHARD_BYTES` (``params/shard-00000/``, ...) listed in
``params/index.json``. Sharding the save keeps host memory bounded (orbax holds a
copy of what it writes), so a 3.5B model converts on a 24 GB machine; restoring
reads every array straight into its sharding on a device mesh.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from acestep_jax.convert.core import (
    CheckpointError,
    TensorSource,
    check_rules,
    iter_converted,
    listing,
    load_flat,
    param_shapes,
    read_json,
)
from acestep_jax.files import check_free_space, wait_until_settled, write_json
from acestep_jax.nn import abstract_model
from acestep_jax.sharding import state_shardings

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
INDEX_FILE = "index.json"
SHARD_BYTES = 512 * 2**20
FORMAT = "acestep-jax-params"


@dataclass(frozen=True)
class Component:
    """How to build, configure and convert one model of the checkpoint."""

    name: str  # folder name in a converted checkpoint
    hf_folder: str  # folder name in the reference (Hugging Face) checkpoint
    config_from_dict: Callable[..., object]  # (dict, **overrides) -> config
    build: Callable[..., nnx.Module]  # (config, rngs=...) -> module
    rules: Callable[[object], list]  # config -> conversion rules
    ignore: tuple[str, ...] = ()  # reference tensors deliberately not converted
    # the config whose layout the files hold, and the restored model as the asked config holds it
    # (the transformer: blocks stacked in files, cut per block for ``unroll_blocks``)
    stored: Callable[[object], object] = lambda cfg: cfg
    held: Callable[[nnx.Module, object], nnx.Module] = lambda model, cfg: model

    def abstract(self, cfg) -> nnx.Module:
        """The model as the files hold it (``stored(cfg)``), shapes only."""
        stored = self.stored(cfg)
        return abstract_model(lambda r: self.build(stored, rngs=r))


def _config_dict(cfg) -> dict:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))


def _flat_state(model_or_state, *filters) -> dict[str, nnx.Variable]:
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, *filters)
    return {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}


def _nest(flat: Mapping[str, object]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


# ----------------------------------------------------------------------------- sharded orbax I/O
def _shard_groups(sizes: Mapping[str, int]) -> list[list[str]]:
    groups, current, total, limit = [], [], 0, SHARD_BYTES
    for path in sorted(sizes):
        if current and total + sizes[path] > limit:
            groups.append(current)
            current, total = [], 0
        current.append(path)
        total += sizes[path]
    if current:
        groups.append(current)
    return groups


def _save_params(
    params_dir: str, sizes: Mapping[str, int], arrays_for: Callable[[list[str]], Mapping], what: str
) -> None:
    """Save the arrays of ``sizes`` (path → bytes) with orbax, one shard group at a time;
    ``arrays_for(paths)`` produces a group's arrays. The free space for ``what`` is checked first."""
    import orbax.checkpoint as ocp

    check_free_space(params_dir, sum(sizes.values()) + (1 << 20), what)
    groups = _shard_groups(sizes)
    os.makedirs(params_dir)
    checkpointer = ocp.StandardCheckpointer()
    index = {}
    for i, paths in enumerate(groups):
        name = f"shard-{i:05d}"
        try:
            checkpointer.save(os.path.join(params_dir, name), _nest(arrays_for(paths)))
            checkpointer.wait_until_finished()
        except BaseException:
            wait_until_settled(params_dir)  # the writers still running, so that the caller's cleanup is final
            raise
        index.update({p: name for p in paths})
    write_json(os.path.join(params_dir, INDEX_FILE), {"format": FORMAT, "version": 1, "arrays": index})


def _read_index(params_dir: str) -> dict[str, str]:
    path = os.path.join(params_dir, INDEX_FILE)
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        return data["arrays"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{params_dir} is not an acestep-jax parameter checkpoint ({e})") from None


def _damaged(what: str, shard_dir: str, error: BaseException) -> CheckpointError:
    """One line naming the component and shard that failed to read, its innermost error, and the fix."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    lines = str(error).strip().splitlines() or [type(error).__name__]
    reason = lines[0] if len(lines[0]) <= 300 else lines[0][:300] + "..."
    return CheckpointError(f"{what}: parameter shard {shard_dir} is damaged or incomplete ({reason}); "
                           "convert the checkpoint again (convert_weights.py SRC DST --overwrite)")


def _stored_shapes(params_dir: str, index: Mapping[str, str], what: str) -> dict[str, tuple[int, ...]]:
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    shapes = {}
    for shard in sorted(set(index.values())):
        shard_dir = os.path.join(params_dir, shard)
        try:
            tree = checkpointer.metadata(shard_dir).item_metadata.tree
        except Exception as e:  # noqa: BLE001 - any failure here means a damaged shard
            raise _damaged(what, shard_dir, e) from None
        shapes.update({k: tuple(v.shape) for k, v in _flatten(tree).items()})
    return shapes


def _restore_params(params_dir: str, index: Mapping[str, str], targets: Mapping[str, jax.ShapeDtypeStruct],
                    what: str) -> dict:
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    out = {}
    for shard in sorted(set(index.values())):
        wanted = {p: targets[p] for p, s in index.items() if s == shard}
        shard_dir = os.path.join(params_dir, shard)
        try:
            out.update(_flatten(checkpointer.restore(shard_dir, _nest(wanted))))
        except Exception as e:  # noqa: BLE001 - truncated or corrupted files surface as TensorStore errors
            raise _damaged(what, shard_dir, e) from None
    return out


# ----------------------------------------------------------------------------- public API
def write_component(
    folder: str | os.PathLike,
    component: Component,
    cfg,
    source: TensorSource,
    *,
    progress: bool = False,
) -> int:
    """Convert reference tensors into ``folder`` (which must not exist). Returns the parameter count.

    The whole rule set is validated before anything is written; tensors are then
    converted shard by shard. On failure the folder is removed.
    """
    from tqdm.auto import tqdm

    folder = os.fspath(folder)
    variables = _flat_state(component.abstract(cfg))
    rules = component.rules(cfg)
    plan = check_rules(rules, source, {k: v.shape for k, v in variables.items()}, ignore=component.ignore,
                       what=component.hf_folder)
    sizes = {k: math.prod(v.shape) * np.dtype(v.dtype).itemsize for k, v in variables.items()}
    bar = tqdm(total=len(variables), disable=not progress, desc=f"converting {component.name}", unit="tensor")

    def arrays_for(paths):
        out = dict(iter_converted(rules, source, plan, targets=paths, dtypes={t: variables[t].dtype for t in paths}))
        bar.update(len(paths))
        return out

    os.makedirs(folder)
    try:
        _save_params(os.path.join(folder, PARAMS_DIR), sizes, arrays_for, f"the converted {component.name}")
        write_json(os.path.join(folder, CONFIG_FILE), _config_dict(cfg))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        bar.close()
    return sum(math.prod(s.shape) for s in plan.shapes.values())


def save_component(folder: str | os.PathLike, model: nnx.Module, cfg) -> None:
    """Save an in-memory (e.g. fine-tuned) model as a component folder; ``folder`` must not exist.

    Attached LoRA adapters are not saved (see :func:`acestep_jax.lora.save_lora`); a transformer
    held one module per block is saved with its blocks stacked, as every checkpoint holds them.
    """
    from acestep_jax.models.transformer import ACEStepTransformer, stack_blocks

    if isinstance(model, ACEStepTransformer):
        model = stack_blocks(model)
    folder = os.fspath(folder)
    variables = _flat_state(model, nnx.Not(nnx.LoRAParam))
    sizes = {k: v[...].nbytes for k, v in variables.items()}
    os.makedirs(folder)
    try:
        _save_params(os.path.join(folder, PARAMS_DIR), sizes, lambda paths: {p: variables[p][...] for p in paths},
                     "the saved model")
        write_json(os.path.join(folder, CONFIG_FILE), _config_dict(cfg))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def read_config(folder: str | os.PathLike, component: Component, **overrides):
    """The component's config from ``folder/config.json`` with ``overrides`` applied."""
    path = os.path.join(os.fspath(folder), CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{component.name}: no {CONFIG_FILE} in {folder}")
    return component.config_from_dict(read_json(path, "convert the checkpoint again"), **overrides)


def load_component(
    folder: str | os.PathLike,
    component: Component,
    *,
    mesh: Mesh | None = None,
    rules=None,
    **config_overrides,
) -> nnx.Module:
    """Restore a component folder, each array directly into its sharding on ``mesh``
    (under ``rules``, default the current :func:`acestep_jax.sharding.axis_rules`).

    ``config_overrides`` (e.g. ``dtype``, ``param_dtype``, ``remat``) replace saved
    config values; a changed ``param_dtype`` casts on restore. Missing, unexpected or
    mis-shaped arrays are reported before any array is read.
    """
    folder = os.fspath(folder)
    cfg = read_config(folder, component, **config_overrides)
    params_dir = os.path.join(folder, PARAMS_DIR)
    index = _read_index(params_dir)
    abstract = component.abstract(cfg)
    state = nnx.state(abstract)
    expected = param_shapes(state)
    stored = _stored_shapes(params_dir, index, component.name)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    misshaped = sorted(
        f"{k}: stored {list(stored[k])}, model expects {list(expected[k])}"
        for k in set(expected) & set(stored) if stored[k] != tuple(expected[k])
    )
    problems = [listing(title, items) for title, items in (
        ("missing arrays", missing), ("unexpected arrays", unexpected), ("mis-shaped arrays", misshaped)) if items]
    if problems:
        raise CheckpointError(f"{component.name} checkpoint {folder} does not match its config:\n" + "\n".join(problems))

    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = dict.fromkeys(expected, device)
    else:
        shardings = {k: v.get_value() for k, v in _flat_state(state_shardings(state, mesh, rules)).items()}
    variables = _flat_state(state)
    targets = {k: jax.ShapeDtypeStruct(expected[k], variables[k].dtype, sharding=shardings[k]) for k in expected}
    return component.held(load_flat(abstract, _restore_params(params_dir, index, targets, component.name)), cfg)
