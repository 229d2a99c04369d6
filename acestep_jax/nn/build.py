"""Building modules: layers stacked on a ``layers`` axis, and abstract models (shapes only).

An abstract model is built with ``rngs=None`` (every parameter drawn from one fixed key):
under tracing, each draw from an ``nnx.Rngs`` costs time in proportion to everything traced
before it (flax 0.12 compares the new counter's sharding, and the tracer's error message walks
the whole trace), so describing the 24-block transformer held one module per block took
about 18 s; built without one it takes well under a second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax.numpy as jnp
from flax import nnx

M = TypeVar("M", bound=nnx.Module)


def stacked(make: Callable[[nnx.Rngs | None], M], n: int, rngs: nnx.Rngs | None) -> M:
    """``n`` modules ``make(rngs)`` with their parameters stacked on a leading ``layers`` axis
    (run by ``lax.scan``); each gets its own split of ``rngs`` (``None``: all drawn from one key)."""
    vmap = nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    if rngs is None:
        return vmap(lambda _: make(None))(jnp.arange(n))
    return nnx.split_rngs(splits=n)(vmap(make))(rngs)


def abstract_model(build: Callable[[nnx.Rngs | None], M]) -> M:
    """The module ``build(rngs)`` makes, as shapes, dtypes and axis names only (``nnx.eval_shape``)."""
    return nnx.eval_shape(lambda: build(None))
