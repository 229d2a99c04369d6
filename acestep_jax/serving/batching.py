"""Which requests share a batch, at which size, and running one batch.

Each output of a request is an :class:`Item`. Items batch together when they have the
same :func:`group_key`:

- :meth:`SamplingParams.structure` — task, scheduler, step count and ``oss_steps``,
  guidance mode (none / apg / cfg / cfg_star / double condition), zero init, the
  task's window or strength, ``bucket`` and ``batch_invariant``;
- the latent length bucket (:func:`acestep_jax.sampling.bucket_frames` of the
  duration: 128 frames, about 11.9 s) — or, for tasks with source audio, the source file;
- the output sample rate (the decode resamples on the device);
- the LoRAs merged into the transformer (job files).

Items may differ in everything else (prompt, lyrics, seeds, duration within the
bucket, guidance scales and interval, omega, ERG switches, retake variance, output
format). A batch of ``n`` items runs at the smallest size of a fixed set (default
:data:`BATCH_SIZES`) that holds it, filled with copies of its first item whose outputs are
dropped; so the compiled program is selected by the key and that size (plus the prompt
and lyric token buckets), and batch invariance makes every output equal to its request
run alone. A request without ``batch_invariant`` (its outputs share the omega mean) is a
batch of its own, at exactly its number of outputs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from acestep_jax.sampling import bucket_frames, seconds_to_frames
from acestep_jax.sampling.params import SOURCE_TASKS
from acestep_jax.serving.requests import RECORD_KEY, Request

BATCH_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Item:
    """Output ``index`` of job ``job``."""

    job: str
    index: int
    request: Request

    @property
    def seed(self) -> int:
        return self.request.seeds[self.index]

    @property
    def retake_seed(self) -> int:
        return self.request.retake_seeds[self.index]

    @property
    def key(self) -> tuple:
        key = group_key(self.request)
        return key if self.request.params.batch_invariant else (*key, ("alone", self.job))


def group_key(request: Request) -> tuple:
    """What items must share to run in one batch (see the module docstring)."""
    p = request.params
    if p.task in SOURCE_TASKS:
        length = ("source", request.source)
    else:
        length = ("frames", bucket_frames(seconds_to_frames(p.duration)))
    return (p.structure(), length, ("sample_rate", request.sample_rate),
            ("lora", tuple(s.to_record().items() for s in request.lora)))


def check_batch_sizes(sizes: Iterable[int], data_devices: int = 1) -> tuple[int, ...]:
    """``sizes`` sorted, each positive and divisible by the mesh's ``data`` axis."""
    sizes = tuple(sorted({int(s) for s in sizes}))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch sizes must be positive integers, got {sizes}")
    if bad := [s for s in sizes if s % data_devices]:
        raise ValueError(f"batch sizes {bad} are not divisible by the {data_devices} data-parallel devices")
    return sizes


def batch_size_for(n: int, sizes: Sequence[int]) -> int:
    """The smallest of ``sizes`` that holds ``n`` items."""
    for s in sizes:
        if s >= n:
            return s
    raise ValueError(f"{n} items exceed the largest batch size {max(sizes)}")


def plan(items: Iterable[Item], sizes: Sequence[int]) -> list[list[Item]]:
    """Batches of compatible items, groups in order of first appearance, each at most ``max(sizes)``
    (a request that is not batch-invariant: all its items)."""
    groups: dict[tuple, list[Item]] = {}
    for item in items:
        groups.setdefault(item.key, []).append(item)
    batches = []
    for g in groups.values():
        step = max(sizes) if g[0].request.params.batch_invariant else len(g)
        batches += [g[i : i + step] for i in range(0, len(g), step)]
    return batches


@dataclass
class ItemResult:
    """One finished output: ``audio [2, n]`` at ``sample_rate`` and its ``record`` (the request
    that reproduces it, plus an ``output`` entry on how it was made)."""

    item: Item
    audio: np.ndarray
    sample_rate: int
    record: dict

    @property
    def seconds(self) -> float:
        return self.audio.shape[-1] / self.sample_rate


@dataclass
class BatchResult:
    results: list[ItemResult]
    size: int  # the compiled batch size (items plus fillers)
    timings: dict[str, float]  # seconds per stage: conditioning, diffusion, decode


def run_batch(pipe, items: Sequence[Item], sizes: Sequence[int] = BATCH_SIZES) -> BatchResult:
    """Generate ``items`` (one :func:`group_key`) with ``pipe`` in one batch of a size from ``sizes``."""
    if not items:
        raise ValueError("run_batch needs at least one item")
    key = items[0].key
    if any(it.key != key for it in items[1:]):
        raise ValueError("items of one batch must share their group key")
    first = items[0].request
    size = batch_size_for(len(items), sizes) if first.params.batch_invariant else len(items)  # no fillers
    filled = list(items) + [items[0]] * (size - len(items))
    pipe.set_loras(list(first.lora))
    edit = first.params.task == "edit"
    start = time.perf_counter()
    out = pipe.generate(
        [it.request.prompt for it in filled], [it.request.lyrics for it in filled],
        [it.request.params for it in filled], seeds=[it.seed for it in filled],
        retake_seeds=[it.retake_seed for it in filled], src_audio=first.source,
        target_prompts=[it.request.target_prompt for it in filled] if edit else None,
        target_lyrics=[it.request.target_lyrics for it in filled] if edit else None,
        sample_rate=first.sample_rate, batch_size=size,
    )
    timings = {**out.timings, "batch": time.perf_counter() - start}
    results = []
    for i, item in enumerate(items):
        output = {"job": item.job, "index": item.index, "batch": {"size": size, "items": len(items), "position": i},
                  "timings": timings}
        record = {**item.request.to_dict(item.index), RECORD_KEY: output}
        results.append(ItemResult(item, out.item_audio(i), out.sample_rate, record))
    return BatchResult(results, size, timings)
