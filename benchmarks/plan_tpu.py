"""TPU plans without a TPU: per-chip memory, largest batch and step time of the full-size
programs, from the TPU compiler (libtpu) running on this CPU host.

    pip install -e ".[plan-tpu]"
    JAX_PLATFORMS=cpu python benchmarks/plan_tpu.py v5e v5p v6e --results tpu_plans.jsonl

Chips this machine lacks are described by ``jax.experimental.topologies`` and programs are
``jit(...).lower(abstract shapes).compile()``d for meshes over them. Two kinds of compile:

* memory: the program as it runs (blocks in a ``lax.scan``), XLA's per-chip memory analysis.
  The guided sampling call compiles at full depth in seconds; the training steps and the
  whole sampling loop can take this compiler tens of minutes at 24 blocks on a small host,
  so they compile with 2 and 4 blocks and each figure is extrapolated linearly to 24
  (stacked parameters, optimizer state and saved block inputs all grow by one block's
  worth per block). Compiling again at
  twice the batch gives the memory per batch unit, hence the largest batch that fits HBM.
* time: the cost model's ``optimal_seconds``. XLA's cost analysis counts a ``while`` body
  once and the cost model gives no figure for programs with loops, so the time comes from
  loop-free *twins* with 1 and 2 blocks (every ``lax.scan`` unrolled, same shapes and mesh):
  ``t(24) = t(1) + 23 * (t(2) - t(1))``. (Their memory does not extrapolate: unrolled, the
  TPU compiler keeps per-block copies a loop reuses.) Where the cost model gives no figure
  (v5e, v6e) the table gives the FLOP bound at the chip's peak instead.

Programs: ``sample``, one guided transformer call (cond + uncond) of the 240 s sampling
loop, one song per chip (a whole generation is 27 steps: 14 guided calls and 13 plain ones
of half the items); ``loop``, that whole sampling loop (memory only: its time is its calls');
``lora`` / ``full``, one optimizer step of the training program (bf16
compute, float32 master weights, AdamW, REPA, remat "full"), one 240 s example per chip.

Each compile is appended to ``--results`` (JSON lines) as it finishes and skipped when the
plan runs again, so a long plan can stop and resume; the table is printed from the file
(``benchmarks/tpu_plans.jsonl`` holds the compiles behind RESULTS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax

from benchmarks.plan_memory import (
    GB,
    SAMPLE_LYRICS,
    SAMPLE_TEXT,
    SECONDS,
    STEPS,
    TRAIN_LYRICS,
    TRAIN_TEXT,
    compile_facts,
    latent_frames,
    lower_guided_decode,
    lower_sample,
    lower_train,
    sample_mesh,
    train_mesh,
)

LAYERS = 24  # transformer blocks of the full-size model


class Chip(NamedTuple):
    hbm: float  # bytes
    peak_flops: float  # bfloat16 FLOP/s (vendor figures)
    timed: bool  # whether the cost model times its programs (libtpu 0.0.42.1: negative times for v5e, v6e)


TPU_CHIPS = {"v5e": Chip(16e9, 197e12, False), "v5p": Chip(95e9, 459e12, True), "v6e": Chip(32e9, 918e12, False)}
TPU_TOPOLOGIES = {"v5e": ("v5e:1x1", "v5e:2x4", "v5e:8x8"), "v5p": ("v5p:1x1x1", "v5p:2x2x2", "v5p:4x4x4"),
                  "v6e": ("v6e:1x1", "v6e:2x4", "v6e:8x8")}
PROGRAMS = ("sample", "loop", "lora", "full")
MEMORY_DEPTHS = {"sample": (LAYERS,), "loop": (2, 4), "lora": (2, 4), "full": (2, 4)}  # blocks of the scanned programs compiled


@dataclasses.dataclass(frozen=True)
class Topology:
    """TPU chips described for the compiler: a name such as ``v5p:2x2x2`` and its devices."""

    name: str
    devices: tuple

    @property
    def chips(self) -> int:
        return len(self.devices)

    @property
    def chip(self) -> Chip:
        return TPU_CHIPS[self.name.split(":")[0]]


def topologies(specs) -> list[Topology]:
    """A generation (``v5e``: its 1, 8 and 64-chip topologies) or topology names (``v5p:2x2x1``)."""
    from jax.experimental import topologies as topo

    out = []
    for name in (n for spec in specs for n in TPU_TOPOLOGIES.get(spec, (spec,))):
        if name.split(":")[0] not in TPU_CHIPS:
            raise SystemExit(f"error: unknown TPU generation in {name!r} (known: {', '.join(TPU_CHIPS)})")
        single = name.endswith(("1x1", "1x1x1"))  # one chip needs one-chip hosts
        desc = topo.get_topology_desc(topology_name=name, platform="tpu",
                                      **({"chips_per_host_bounds": (1, 1, 1)} if single else {}))
        out.append(Topology(name, tuple(desc.devices)))
    return out


@contextlib.contextmanager
def unrolled_scans():
    """Every ``lax.scan`` traced inside unrolls (so cost analysis counts each iteration)."""
    original = jax.lax.scan

    def scan(*args, **kwargs):
        kwargs["unroll"] = True
        return original(*args, **kwargs)

    jax.lax.scan = scan
    try:
        yield
    finally:
        jax.lax.scan = original


# ----------------------------------------------------------------------------- compiles
@dataclasses.dataclass(frozen=True)
class Job:
    """One compile: ``kind`` "scan" is the program as it runs (its memory), "twin" its loop-free
    twin (its time); ``unit``: songs per chip (sample) or examples per chip (train)."""

    topology: Topology
    program: str
    kind: str
    layers: int
    unit: int

    @property
    def key(self) -> tuple:
        return self.topology.name, self.program, self.kind, self.layers, self.unit


def jobs(t: Topology, program: str, fit: bool) -> list[Job]:
    units = (1, 2) if fit else (1,)
    out = [Job(t, program, "scan", layers, unit) for unit in units for layers in MEMORY_DEPTHS[program]]
    if t.chip.timed and program != "loop":  # the loop's time is its calls'
        out += [Job(t, program, "twin", layers, 1) for layers in (1, 2)]
    return out


def lower(job: Job):
    n, devices = job.topology.chips, list(job.topology.devices)
    layers = None if job.layers == LAYERS else job.layers
    with unrolled_scans() if job.kind == "twin" else contextlib.nullcontext():
        if job.program == "sample":
            return lower_guided_decode(job.unit * n, sample_mesh(n, job.unit * n, devices), layers=layers)
        if job.program == "loop":
            return lower_sample(job.unit * n, sample_mesh(n, job.unit * n, devices), layers=layers)[0]
        return lower_train(job.program, "full", 1, job.unit, train_mesh(n, devices), layers=layers)[0]


def measure(job: Job) -> dict:
    """The compile's per-chip figures (None where the compiler refused it, e.g. out of HBM)."""
    record = {"topology": job.topology.name, "program": job.program, "kind": job.kind, "layers": job.layers,
              "unit": job.unit, "libtpu": libtpu_version(), "date": time.strftime("%Y-%m-%d")}
    start = time.perf_counter()
    try:
        facts, cost = compile_facts(lower(job))
    except jax.errors.JaxRuntimeError as e:  # the compiler's own refusal, recorded as such
        return record | {"arguments": None, "temporaries": None, "peak": None, "optimal_seconds": None,
                         "compile_seconds": round(time.perf_counter() - start, 1), "error": str(e).splitlines()[0]}
    return record | {"arguments": facts.arguments, "temporaries": facts.temporaries, "peak": facts.peak,
                     "compile_seconds": round(facts.seconds, 1), "optimal_seconds": (cost or {}).get("optimal_seconds"),
                     "flops": facts.xla_flops}


def libtpu_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("libtpu")
    except metadata.PackageNotFoundError:
        return None


def key(record: dict) -> tuple:
    return record["topology"], record["program"], record["kind"], record["layers"], record["unit"]


def load(path: Path) -> dict:
    if not path.exists():
        return {}
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {key(r): r for r in records}


def append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- extrapolation
def at_depth(points: dict[int, float | None], layers: int = LAYERS) -> float | None:
    """A figure linear in the number of blocks, at ``layers`` blocks from its values at one or
    two depths (``{depth: value}``); None where a value is missing or the cost model gave no
    figure (zero or negative)."""
    if any(v is None or v <= 0 for v in points.values()) or not points:
        return None
    if layers in points:
        return points[layers]
    (a, fa), (b, fb) = sorted(points.items())
    return fa + (layers - a) * (fb - fa) / (b - a)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One program on one topology at the full depth (bytes and seconds per chip)."""

    topology: str
    program: str
    arguments: float
    temporaries: float
    peak: float
    seconds: float | None  # the cost model's time of one call / step, where it gives one
    per_unit: float | None  # extra peak bytes per extra batch unit (song or example per chip)
    compile_seconds: float

    def largest_units(self, hbm: float) -> int | None:
        """The most batch units per chip whose peak fits ``hbm`` (None: not measured or none fits)."""
        if self.peak > hbm or self.per_unit is None:
            return None
        return 1 + int((hbm - self.peak) // max(self.per_unit, 1.0))


def plan_of(records: dict, topology: str, program: str) -> Plan | None:
    def figure(kind, depths, unit, name):
        got = {d: records.get((topology, program, kind, d, unit)) for d in depths}
        return None if None in got.values() else at_depth({d: r[name] for d, r in got.items()})

    depths = MEMORY_DEPTHS[program]
    mem = {f: figure("scan", depths, 1, f) for f in ("arguments", "temporaries", "peak")}
    if mem["peak"] is None:
        return None
    twice = figure("scan", depths, 2, "peak")
    used = [r for k, r in records.items() if k[:2] == (topology, program)]
    return Plan(topology, program, mem["arguments"], mem["temporaries"], mem["peak"],
                figure("twin", (1, 2), 1, "optimal_seconds"), None if twice is None else twice - mem["peak"],
                sum(r["compile_seconds"] for r in used))


def guided_calls() -> float:
    """A 240 s generation at the reference's defaults in guided calls (a plain call runs half the items)."""
    from acestep_jax.sampling import SamplingParams
    from benchmarks.bench_generate import transformer_calls

    guided, plain = transformer_calls(SamplingParams(duration=SECONDS, infer_steps=STEPS))
    return guided + plain / 2


def program_flops(program: str, chips: int) -> float:
    """Analytic transformer FLOPs of one call (sample: a guided call, one song per chip) or step."""
    from acestep_jax.models.transformer.flops import decode_flops
    from acestep_jax.presets import preset_config

    tcfg = preset_config("full", "transformer")
    if program == "sample":
        return decode_flops(tcfg, 2 * chips, latent_frames(SECONDS), 1 + SAMPLE_TEXT + SAMPLE_LYRICS)
    # forward, remat recompute and backward: activation gradients (1x forward), plus weight gradients (1x) when trained
    passes = 3 if program == "lora" else 4
    return passes * decode_flops(tcfg, chips, latent_frames(SECONDS), 1 + TRAIN_TEXT + TRAIN_LYRICS)


# ----------------------------------------------------------------------------- tables
DESCRIPTIONS = {"sample": "guided call, 1 song/chip", "loop": "whole sampling loop, 1 song/chip",
                "lora": "LoRA step, 1 example/chip", "full": "full fine-tune step, 1 example/chip"}


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def table(records: dict, tops: list[Topology], programs) -> str:
    head = ("| topology | program | mesh (data x fsdp x tensor) | per-chip args / temp / peak GB | "
            "compiles s | cost model s per call or step | FLOP bound s | one 240 s generation s | "
            "largest batch per chip |")
    rows = [head, "|---" * (head.count("|") - 1) + "|"]
    for t in tops:
        for program in programs:
            plan = plan_of(records, t.name, program)
            refused = [r for k, r in records.items() if k[:2] == (t.name, program) and r.get("error")]
            if plan is None and refused:
                rows.append(f"| {t.name} | {program} | - | compiler refused: {refused[0]['error']} |||||")
            if plan is None:
                continue
            n = t.chips
            sampling = program in ("sample", "loop")
            mesh = sample_mesh(n, n, list(t.devices)) if sampling else train_mesh(n, list(t.devices))
            shape = "x".join(str(mesh.shape[a]) for a in ("data", "fsdp", "tensor"))
            fit = plan.largest_units(t.chip.hbm)
            items = "song" if sampling else "example"
            fits = f"{fit} ({plural(fit * n, items)} in all)" if fit else ("does not fit" if plan.peak > t.chip.hbm else "-")
            timing = "| - | - | - |"  # the loop: see the guided call
            if program != "loop":
                bound = program_flops(program, n) / (n * t.chip.peak_flops)
                step = plan.seconds or bound
                generation = f"{step * guided_calls():.1f} ({plural(n, 'song')})" if program == "sample" else "-"
                timing = f"| {f'{plan.seconds:.3f}' if plan.seconds else 'no figure'} | {bound:.3f} | {generation} |"
            rows.append(
                f"| {t.name} ({plural(n, 'chip')}, {t.chip.hbm / GB:.0f} GB) | {DESCRIPTIONS[program]} | {shape} | "
                f"{plan.arguments / GB:.2f} / {plan.temporaries / GB:.2f} / {plan.peak / GB:.2f} | "
                f"{plan.compile_seconds:.0f} {timing} {fits} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tpus", nargs="+", metavar="GEN_OR_TOPOLOGY",
                   help="TPU generations (v5e v5p v6e: 1, 8 and 64 chips) or topologies (v5p:2x2x1)")
    p.add_argument("--programs", nargs="+", choices=PROGRAMS, default=list(PROGRAMS))
    p.add_argument("--results", type=Path, default=Path("tpu_plans.jsonl"),
                   help="JSON lines of compiles: appended to, and what it holds is not compiled again")
    p.add_argument("--no-fit", action="store_true", help="skip the compiles at twice the batch (no largest batch)")
    p.add_argument("--table-only", action="store_true", help="print the tables from --results, compile nothing")
    args = p.parse_args(argv)
    if jax.devices()[0].platform != "cpu":
        p.error("run with JAX_PLATFORMS=cpu: the TPU compiler runs here without a TPU")
    tops = topologies(args.tpus)
    records = load(args.results)
    todo = [j for t in tops for prog in args.programs for j in jobs(t, prog, not args.no_fit)
            if j.key not in records]
    print(f"jax {jax.__version__}, libtpu {libtpu_version()}, {time.strftime('%Y-%m-%d')}: "
          f"{len(todo)} compiles to run, {len(records)} recorded in {args.results}", flush=True)
    for i, job in enumerate([] if args.table_only else todo, 1):
        record = measure(job)
        append(args.results, record)
        records[job.key] = record
        got = record.get("error") or (f"peak {record['peak'] / GB:.2f} GB, "
                                      f"optimal_seconds {record['optimal_seconds']}")
        print(f"[{i}/{len(todo)}] {job.topology.name} {job.program} {job.kind} {job.layers} blocks x{job.unit}: "
              f"{got}, {record['compile_seconds']} s", flush=True)
    print("\n" + table(records, tops, args.programs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
