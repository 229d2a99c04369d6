"""Device meshes and the logical-axis → mesh-axis rules.

Parameters carry logical axis names (``embed``, ``mlp``, ``heads``, ...) in their
``out_sharding`` metadata and activations are annotated with :func:`constrain`.
A rules table maps each logical name onto mesh axes (``data``, ``fsdp``,
``tensor``). Meshes use ``AxisType.Auto`` so XLA's partitioner propagates the
annotations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis, tuple of mesh axes, or None (replicated)
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
    ("conv_in", None),
    ("conv_out", None),
)


def make_mesh(
    data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Build a ``(data, fsdp, tensor)`` mesh; one size may be ``-1`` to use the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if known <= 0 or len(devices) % known:
        raise ValueError(
            f"mesh data={data} fsdp={fsdp} tensor={tensor} does not divide {len(devices)} devices"
        )
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}"
        )
    grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(
    axes: Sequence[str | None] | None,
    rules: Sequence[tuple[str, str | tuple[str, ...] | None]] = DEFAULT_RULES,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
) -> PartitionSpec:
    """Map logical axis names onto a :class:`PartitionSpec`.

    A mesh axis is used at most once per spec. With ``shape`` and ``mesh`` given, a
    dimension that the mesh axes do not divide evenly stays replicated.
    """
    if axes is None:
        return PartitionSpec()
    table: Mapping[str, str | tuple[str, ...] | None] = dict(rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        target = table.get(name) if name is not None else None
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        mesh_axes = tuple(a for a in mesh_axes if a not in used)
        if mesh is not None:
            mesh_axes = tuple(a for a in mesh_axes if a in mesh.shape)
        if shape is not None and mesh is not None and mesh_axes:
            if shape[i] % math.prod(mesh.shape[a] for a in mesh_axes):
                mesh_axes = ()
        used.update(mesh_axes)
        spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


def state_shardings(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES):
    """A tree of :class:`NamedSharding` matching ``state`` (abstract or concrete)."""

    def one(var):
        axes = var.get_metadata().get("out_sharding")
        return var.replace(NamedSharding(mesh, logical_to_spec(axes, rules, var.shape, mesh)))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.Module:
    """Place a model's parameters on ``mesh`` according to their logical axes (in place)."""
    state = nnx.state(model)
    nnx.update(model, jax.tree.map(put_global, state, state_shardings(state, mesh, rules)))
    return model


def put_global(x, sharding: jax.sharding.Sharding) -> jax.Array:
    """:func:`jax.device_put`, also from one process's array onto a sharding that spans other
    processes (multi-host): every process passes the same value and keeps its own part."""
    if sharding.is_fully_addressable or not isinstance(x, jax.Array) or not x.is_fully_addressable:
        return jax.device_put(x, sharding)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # key data gets one more (replicated) axis
        return jax.random.wrap_key_data(put_global(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(x), sharding)


def constrain(x: jax.Array, axes: Sequence[str | None], rules=DEFAULT_RULES) -> jax.Array:
    """Annotate an activation's sharding when a mesh is active (``jax.set_mesh``); else no-op."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, rules, x.shape, mesh))
