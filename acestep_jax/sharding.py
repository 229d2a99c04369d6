"""Device meshes and the logical-axis → mesh-axis rules.

Parameters carry logical axis names (``embed``, ``mlp``, ``heads``, ...) in their
``out_sharding`` metadata and activations are annotated with :func:`constrain`.
A rules table maps each logical name onto mesh axes (``data``, ``fsdp``,
``tensor``). The table in effect is a context (:func:`axis_rules`, default
:data:`DEFAULT_RULES`) that parameter placement and activation constraints both
read, so they always agree. Meshes use ``AxisType.Auto`` so XLA's partitioner
propagates the annotations.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from collections.abc import Iterator, Mapping, Sequence

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
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

log = logging.getLogger(__name__)
_RULES: contextvars.ContextVar[tuple] = contextvars.ContextVar("acestep_jax_axis_rules", default=DEFAULT_RULES)
_REPORTED: set = set()  # replicated fall-backs already logged


def current_rules() -> tuple:
    """The logical-axis rules in effect (see :func:`axis_rules`)."""
    return _RULES.get()


@contextlib.contextmanager
def axis_rules(rules: Rules | None) -> Iterator[tuple]:
    """Use ``rules`` (``None``: keep the current ones) for parameters and activations in this block."""
    token = _RULES.set(_RULES.get() if rules is None else tuple(rules))
    try:
        yield _RULES.get()
    finally:
        _RULES.reset(token)


def rules_with(overrides: Mapping[str, str | Sequence[str] | None] | None, base: Rules = DEFAULT_RULES) -> tuple:
    """``base`` with some logical names mapped elsewhere: ``{"embed": None, "mlp": ["fsdp", "tensor"]}``.

    Raises ``ValueError`` naming an unknown logical name or mesh axis.
    """
    table = dict(base)
    for name, target in (overrides or {}).items():
        if name not in table:
            raise ValueError(f"unknown logical axis {name!r} in sharding rules; known: {sorted(table)}")
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        bad = [a for a in axes if a not in MESH_AXES]
        if bad:
            raise ValueError(f"sharding rule {name!r} names mesh axes {bad}; mesh axes are {MESH_AXES}")
        table[name] = None if not axes else axes[0] if len(axes) == 1 else axes
    return tuple(table.items())


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
    rules: Rules | None = None,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    what: str = "activation",
) -> PartitionSpec:
    """Map logical axis names onto a :class:`PartitionSpec` (``rules``: default the current ones).

    A mesh axis is used at most once per spec. With ``shape`` and ``mesh`` given, a
    dimension that the mesh axes do not divide evenly stays replicated (logged once,
    naming ``what``).
    """
    if axes is None:
        return PartitionSpec()
    table: Mapping[str, str | tuple[str, ...] | None] = dict(current_rules() if rules is None else rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        target = table.get(name) if name is not None else None
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        mesh_axes = tuple(a for a in mesh_axes if a not in used)
        if mesh is not None:
            mesh_axes = tuple(a for a in mesh_axes if a in mesh.shape)
        if shape is not None and mesh is not None and mesh_axes:
            ways = math.prod(mesh.shape[a] for a in mesh_axes)
            if shape[i] % ways:
                _report_replicated(what, name, i, shape, mesh_axes, ways)
                mesh_axes = ()
        used.update(mesh_axes)
        spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


def _report_replicated(what, name, dim, shape, mesh_axes, ways) -> None:
    key = (what, name, dim, tuple(shape), mesh_axes)
    if key not in _REPORTED:
        _REPORTED.add(key)
        log.info("%s %s: dimension %d (%s, size %d) is not divisible by mesh axes %s (%d ways): replicated",
                 what, tuple(shape), dim, name, shape[dim], "×".join(mesh_axes), ways)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules | None = None):
    """A tree of :class:`NamedSharding` matching ``state`` (abstract or concrete)."""

    def one(path, var):
        axes = var.get_metadata().get("out_sharding")
        what = "parameter " + "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        return var.replace(NamedSharding(mesh, logical_to_spec(axes, rules, var.shape, mesh, what)))

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules | None = None) -> nnx.Module:
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


def constrain(x: jax.Array, axes: Sequence[str | None], rules: Rules | None = None) -> jax.Array:
    """Annotate an activation's sharding when a mesh is active (``jax.set_mesh``); else no-op."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, rules, x.shape, mesh))
