"""Typed inputs of the jitted sampling loops (pytrees built by :mod:`acestep_jax.sampling.tasks`).

:class:`LoopInputs` groups its arrays by how they are laid out, so padding and
sharding are one tree-map each:

* ``latents`` (:class:`Latents`): ``[B, 8, 16, T]`` arrays, padded on the frame axis
  for bucketed runs and sharded on the batch axis;
* ``items`` (:class:`ItemInputs`): per-item ``[B, ...]`` values (guidance, omega, ERG
  switches, frame mask), sharded on the batch axis;
* ``schedule`` (:class:`ScheduleInputs`): the shared timestep table and step bounds,
  replicated.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from acestep_jax.sharding import put_global


def pad_frames(a: jax.Array, total: int) -> jax.Array:
    """Zero-pad the last (frame) axis of ``a`` to ``total``."""
    pad = total - a.shape[-1]
    return a if pad == 0 else jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)])


def shard_batch(tree, mesh, axis: int = 0):
    """Place every array of ``tree`` on ``mesh`` split along ``axis`` over the ``data`` axis
    (a mesh may span processes: each process passes the whole value)."""

    def put(a):
        spec = [None] * a.ndim
        spec[axis] = "data"
        return put_global(a, NamedSharding(mesh, P(*spec)))

    return jax.tree.map(put, tree)


@jax.tree_util.register_dataclass
@dataclass
class Latents:
    """Latent-shaped arrays ``[B, 8, 16, T]`` (float32).

    ``x``: the starting latents (text2music family) or the source latents (edit);
    repaint/extend add ``x0`` (the source, padded to the output), ``z0`` (the noise the
    regenerated frames start from) and ``repaint_mask`` (1 on regenerated frames).
    """

    x: jax.Array
    x0: jax.Array | None = None
    z0: jax.Array | None = None
    repaint_mask: jax.Array | None = None


@jax.tree_util.register_dataclass
@dataclass
class ItemInputs:
    """Per-item values: the guidance schedule ``active``/``scale [B, n]``, the double-condition
    scales ``scale_text``/``scale_lyric [B]``, the rescaled ``omega [B]``, the ERG switches
    ``erg_tag``/``erg_lyric``/``erg_diffusion [B]`` and, for padded runs, ``frame_mask [B, T]``
    (1 on each item's valid frames)."""

    active: jax.Array
    scale: jax.Array
    scale_text: jax.Array
    scale_lyric: jax.Array
    omega: jax.Array
    erg_tag: jax.Array
    erg_lyric: jax.Array
    erg_diffusion: jax.Array
    frame_mask: jax.Array | None = None


@jax.tree_util.register_dataclass
@dataclass
class ScheduleInputs:
    """The shared table (``timesteps [n]``, ``sigmas [n + 1]``) and step bounds (int32):
    the loop runs steps ``start..n-1``; FlowEdit edits steps ``start..stop-1`` averaging
    ``n_avg`` forward noises per step."""

    timesteps: jax.Array
    sigmas: jax.Array
    start: jax.Array
    stop: jax.Array | None = None
    n_avg: jax.Array | None = None


@jax.tree_util.register_dataclass
@dataclass
class LoopInputs:
    latents: Latents
    items: ItemInputs
    schedule: ScheduleInputs

    @property
    def frame_mask(self) -> jax.Array | None:
        return self.items.frame_mask

    def pad(self, total: int) -> LoopInputs:
        """Latents zero-padded to ``total`` frames (the frame mask is set by the caller)."""
        return LoopInputs(jax.tree.map(lambda a: pad_frames(a, total), self.latents), self.items, self.schedule)

    def shard(self, mesh) -> LoopInputs:
        """Latents and per-item values split over ``mesh``'s ``data`` axis; the schedule replicated."""
        replicated = jax.tree.map(lambda a: put_global(a, NamedSharding(mesh, P())), self.schedule)
        return LoopInputs(shard_batch(self.latents, mesh), shard_batch(self.items, mesh), replicated)
