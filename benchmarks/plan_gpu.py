"""GPU plans without a GPU: memory, kernels, FLOPs, bytes and roofline times of the full-size
programs, from XLA's GPU compiler (the CUDA plugin of ``jax[cuda12]``) running on this CPU host.

    pip install -e ".[plan-gpu]"     # in its own environment (about 3.4 GB)
    JAX_PLATFORMS=cpu python benchmarks/plan_gpu.py h100 a100 l4 rtx4090 --gpu-settings --results benchmarks/gpu_plans.jsonl

Each GPU is a ``GpuTargetConfig`` text proto written from the vendor's public figures
(:data:`GPUS`), handed to ``jax.experimental.topologies.get_topology_desc(platform="cuda")``
as one GPU (``1x1x1``) or 8 in one host (``1x1x8``); each program is
``jit(...).lower(abstract shapes).compile()``d for a mesh over those devices, with XLA's
default flags (the sampling programs with the loops' own options,
``sampler.loop_compiler_options``) and no autotuning (there is no device to time candidates
on). ``--gpu-settings`` compiles the transformer as GPUs load it (``gpu_transformer_settings``;
the training steps as the trainer runs on GPUs); without it, in its CPU/TPU form. Each record
names its settings, and a run tabulates only the records made with its own.

Per compile: XLA's memory analysis (arguments / temporaries / peak per GPU) and a walk of the
optimised HLO (``cost_analysis`` is unimplemented for deviceless GPU compiles): every kernel
launch (fusions, cuBLAS/cuDNN custom calls, copies, transposes, collectives) counted at the
trip counts of its ``while`` loops (the sampling steps' loop, whose start is traced, at 27; branches of a ``conditional`` at equal weights, so a
sampling step counts half a guided and half a plain call), the GEMMs' FLOPs (2 x output x
contracted size; convolutions are not counted), the bytes each kernel reads and writes (a
fused operand read only through a (dynamic) slice counts that slice; an in-place update its
update), and the roofline: the sum over kernels of max(FLOPs / peak, bytes / bandwidth). It
ignores launch gaps and is a **lower bound** on the time, not a prediction.

Programs: ``sample``, one guided transformer call (cond + uncond) at 240 s; ``loop``, the whole
27-step sampling loop (240 s and 60 s); ``codec``, decode + vocoder of one song (float32; ``codec-bf16`` the same in bfloat16, ``--codec-dtype``);
``lora`` / ``full``, one training step (as ``plan_tpu.py``). ``sample`` and ``codec`` compile
at full depth (``sample`` also at 2 and 4 blocks, for what one block adds); the other 24-block
programs compile with 2 and 4 blocks and every figure is extrapolated linearly to 24
(``plan_tpu.at_depth``): the compiler's time on 2 CPU cores, not their structure, is the
reason. Compiles are appended to ``--results`` and not run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from acestep_jax.models.transformer import gpu_transformer_settings
from acestep_jax.nn import abstract_model
from benchmarks import plan_memory
from benchmarks.plan_memory import (
    GB,
    LATENT,
    STEPS,
    lower_guided_decode,
    lower_sample,
    lower_train,
    sample_mesh,
    train_mesh,
)
from benchmarks.plan_tpu import LAYERS, append, at_depth

# ----------------------------------------------------------------------------- targets


class Gpu(NamedTuple):
    """Public figures of one GPU (dense bfloat16 tensor-core peak with float32 accumulation)."""

    label: str
    capability: tuple[int, int]
    sms: int
    clock_ghz: float
    bandwidth: float  # bytes/s
    l2: int
    memory: int  # bytes
    smem_per_sm: int
    smem_optin: int
    peak_flops: float


GPUS = {
    "h100": Gpu("H100 SXM 80GB", (9, 0), 132, 1.98, 3.35e12, 50 << 20, 84_929_347_584, 233_472, 232_448, 989e12),
    "a100": Gpu("A100 SXM 80GB", (8, 0), 108, 1.41, 2.039e12, 40 << 20, 85_051_572_224, 167_936, 166_912, 312e12),
    "l4": Gpu("L4 24GB", (8, 9), 58, 2.04, 0.3e12, 48 << 20, 23_580_639_232, 102_400, 101_376, 121e12),
    "rtx4090": Gpu("RTX 4090 24GB", (8, 9), 128, 2.52, 1.008e12, 72 << 20, 25_393_692_672, 102_400, 101_376, 165e12),
}
REFERENCE_RTF = {"a100": 27.27, "rtx4090": 34.48}  # the reference's README: 60 s, 27 steps, batch 1


def target_config(gpu: Gpu) -> str:
    """The ``GpuTargetConfig`` text proto XLA compiles for."""
    major, minor = gpu.capability
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {gpu.smem_per_sm}
  threads_per_core_limit: {1536 if gpu.capability == (8, 9) else 2048}
  core_count: {gpu.sms}
  fpus_per_core: {64 if gpu.capability == (8, 0) else 128}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(gpu.bandwidth)}
  l2_cache_size: {gpu.l2}
  clock_rate_ghz: {gpu.clock_ghz}
  device_memory_size: {gpu.memory}
  shared_memory_per_block_optin: {gpu.smem_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "NVIDIA {gpu.label}"
"""


@dataclasses.dataclass(frozen=True)
class Topology:
    """``gpus`` GPUs of one kind in one host, as the compiler sees them."""

    gpu: str
    gpus: int
    devices: tuple

    @property
    def name(self) -> str:
        return f"{self.gpu}:{self.gpus}"


def topology(gpu: str, gpus: int) -> Topology:
    from jax.experimental import topologies

    desc = topologies.get_topology_desc(platform="cuda", target_config=target_config(GPUS[gpu]),
                                        topology=f"1x1x{gpus}")
    return Topology(gpu, gpus, tuple(desc.devices))


# ----------------------------------------------------------------------------- programs
PROGRAMS = ("sample", "loop", "codec", "codec-bf16", "lora", "full")
# the guided call compiles at full depth, and at 2 and 4 blocks for what one block adds
DEPTHS = {"sample": (2, 4, LAYERS), "loop": (2, 4), "codec": (0,), "codec-bf16": (0,), "lora": (2, 4), "full": (2, 4)}
DURATIONS = {"loop": (240.0, 60.0), "codec": (240.0, 60.0), "codec-bf16": (240.0, 60.0)}  # the others at 240 s


@dataclasses.dataclass(frozen=True)
class Job:
    """One compile: ``unit`` songs (or examples) per GPU, ``layers`` blocks (0: no transformer)."""

    topology: Topology
    program: str
    seconds: float
    layers: int
    unit: int

    @property
    def key(self) -> tuple:
        return self.topology.name, self.program, self.seconds, self.layers, self.unit


def jobs(t: Topology, program: str, fit: bool) -> list[Job]:
    out = []
    for seconds in DURATIONS.get(program, (240.0,)):
        units = (1, 2) if fit and seconds == 240.0 else (1,)
        out += [Job(t, program, seconds, d, 1) for d in DEPTHS[program]]
        out += [Job(t, program, seconds, d, u) for u in units[1:] for d in whole_depths(program)]
    return out


def lower_codec(batch: int, mesh, seconds: float, dtype: str = "float32"):
    """Decode + vocoder + resampling of ``batch`` songs of ``seconds`` as the pipeline decodes a
    bucketed request (latents padded to the bucket, the items' lengths masked, windows past
    ``OVERLAP_DECODE_SECONDS``), the codec in ``dtype``."""
    from acestep_jax.codec import MusicCodec
    from acestep_jax.codec import codec as lib
    from acestep_jax.pipeline import DECODE_WINDOW_FRAMES, OVERLAP_DECODE_SECONDS
    from acestep_jax.presets import preset_config
    from acestep_jax.sampling import bucket_frames

    dt = {"dtype": dtype, "param_dtype": dtype}
    model = abstract_model(lambda r: MusicCodec(preset_config("full", "dcae", **dt),
                                                preset_config("full", "vocoder", **dt), rngs=r))
    graphdef, state = nnx.split(model)
    rate, window = lib.OUTPUT_SAMPLE_RATE, DECODE_WINDOW_FRAMES if seconds > OVERLAP_DECODE_SECONDS else None

    def decode(s, latents, n, n_out):
        c = nnx.merge(graphdef, s)
        if window is None:
            return lib._decode_plain(c, latents, n, n_out, rate)
        return lib._decode_windowed(c, latents, n, n_out, window, 8 * window, rate)

    replicated, by_batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    fn = jax.jit(decode, in_shardings=(jax.tree.map(lambda _: replicated, state), by_batch, by_batch, by_batch),
                 out_shardings=by_batch)
    frames = bucket_frames(lib.seconds_to_frames(seconds))
    lengths = jax.ShapeDtypeStruct((batch,), jnp.int32)
    with jax.set_mesh(mesh):
        return fn.lower(state, jax.ShapeDtypeStruct((batch, *LATENT, frames), jnp.float32), lengths, lengths)


def lower(job: Job):
    n, devices = job.topology.gpus, list(job.topology.devices)
    layers = None if job.layers == LAYERS else job.layers
    batch = job.unit * n
    if job.program == "sample":
        return lower_guided_decode(batch, sample_mesh(n, batch, devices), layers=layers)
    if job.program == "loop":
        return lower_sample(batch, sample_mesh(n, batch, devices), layers=layers, seconds=job.seconds)[0]
    if job.program in ("codec", "codec-bf16"):
        dtype = "bfloat16" if job.program == "codec-bf16" else "float32"
        return lower_codec(batch, sample_mesh(n, batch, devices), job.seconds, dtype)
    return lower_train(job.program, "full", 1, job.unit, train_mesh(n, devices), layers=layers)[0]


# ----------------------------------------------------------------------------- the HLO walk
BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
         "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8}
FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call",
        "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency", "copy-done", "send-done",
        "recv-done", "all-reduce-done", "all-gather-done", "collective-permute-done", "async-done",
        "async-update"}
HOST = {"send", "recv", "infeed", "outfeed"}
SLICING = {"parameter", "slice", "dynamic-slice", "constant", "bitcast", "tuple"}  # fusions that only copy
ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")


def shape_bytes(shape: str) -> int:
    return sum(BYTES.get(t, 4) * _prod(dims) for t, dims in ARRAY.findall(shape))


def _prod(dims: str) -> int:
    out = 1
    for d in filter(None, dims.split(",")):
        out *= int(d)
    return out


def _dims(shape: str) -> list[int]:
    m = ARRAY.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


class Instr(NamedTuple):
    name: str
    shape: str
    opcode: str
    operands: list[str]  # operand names
    attrs: str


def _split_top(text: str) -> list[str]:
    """``text`` split at commas outside brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def _instruction(line: str) -> Instr | None:
    m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$", line)
    if not m:
        return None
    name, rest = m.groups()
    if rest.startswith("("):  # a tuple shape
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        shape, rest = rest[: i + 1], rest[i + 1:].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    om = re.match(r"([\w\-]+)\((.*)$", rest)
    if not om:
        return None
    opcode, tail = om.groups()
    depth, i = 1, 0
    for i, ch in enumerate(tail):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            break
    operands = [o.split("%")[-1].strip() if "%" in o else o.split(" ")[-1] for o in _split_top(tail[:i])]
    return Instr(name, shape, opcode, operands, tail[i + 1:])


def parse_hlo(text: str) -> tuple[dict[str, list[Instr]], str]:
    """Computations of an HLO module's text (``{name: instructions}``) and the entry's name."""
    comps, entry, current = {}, "", None
    for line in text.splitlines():
        head = re.match(r"(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)  # headers are not indented
        if head:
            current = head.group(2)
            comps[current] = []
            entry = current if head.group(1) else entry
        elif line.strip() == "}":
            current = None
        elif current is not None and (ins := _instruction(line)):
            comps[current].append(ins)
    return comps, entry


def _called(attrs: str, key: str) -> list[str]:
    """The computations an instruction names in attribute ``key`` (``calls=%f``, ``branch_computations={%a, %b}``)."""
    m = re.search(rf"\b{key}=(\{{[^}}]*\}}|%?[\w.\-]+)", attrs)
    return [c.strip(" %{}") for c in m.group(1).split(",")] if m else []


@dataclasses.dataclass
class Facts:
    """Kernel launches, FLOPs, bytes and roofline seconds of a walked program."""

    kernels: float = 0.0
    kinds: Counter = dataclasses.field(default_factory=Counter)
    flops: float = 0.0
    bytes: float = 0.0
    seconds: float = 0.0
    f32_gemms: list = dataclasses.field(default_factory=list)  # jax operation names (else shapes)
    custom_calls: Counter = dataclasses.field(default_factory=Counter)


class Walker:
    """Counts the kernels of an optimised GPU HLO module for one :class:`Gpu`."""

    def __init__(self, text: str, gpu: Gpu, unknown_trips: int = 1):
        self.comps, self.entry = parse_hlo(text)
        self.shapes = {i.name: i.shape for body in self.comps.values() for i in body}  # names are module-unique
        self.gpu, self.unknown_trips = gpu, unknown_trips  # unknown_trips: loops without a known trip count

    def _fused_root(self, comp: str) -> Instr | None:
        body = self.comps.get(comp, [])
        return body[-1] if body else None

    def _kind(self, ins: Instr) -> str:
        if ins.opcode in HOST or (ins.opcode == "custom-call" and "callback" in ins.attrs):
            return "host transfer"
        if ins.opcode == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', ins.attrs)
            t = target.group(1) if target else "?"
            return "gemm" if "gemm" in t or "matmul" in t else ("attention" if "fmha" in t else "custom " + t)
        if ins.opcode == "fusion":
            callee = (_called(ins.attrs, "calls") or [""])[0]
            root = self._fused_root(callee)
            ops = {i.opcode for i in self.comps.get(callee, [])}
            if "dot" in ops or "__triton_gemm" in ins.attrs:
                return "gemm"
            if root is not None and root.opcode in ("transpose", "copy") or "transpose" in ins.name:
                return "transpose" if root is None or root.opcode == "transpose" or "transpose" in ins.name else "copy"
            if ops & {"slice", "dynamic-slice"} and ops <= SLICING:  # a weight cut out of its stack
                return "copy"
            return "fusion"
        if ins.opcode in ("copy", "copy-start", "dynamic-slice"):
            return "copy"
        if ins.opcode == "transpose":
            return "transpose"
        if ins.opcode in ("dot", "convolution"):
            return "gemm"
        if ins.opcode.startswith(("all-", "reduce-scatter", "collective")):
            return "collective"
        return ins.opcode

    def _gemm_flops(self, ins: Instr) -> tuple[float, str, str]:
        """FLOPs of a GEMM kernel, its input dtype and the jax operation it came from."""
        dot = ins
        if ins.opcode == "fusion":
            callee = (_called(ins.attrs, "calls") or [""])[0]
            dot = next((i for i in self.comps.get(callee, []) if i.opcode == "dot"), None)
            if dot is None:
                return 0.0, "?", ""
        if not dot.operands:
            return 0.0, "?", ""
        lhs = _dims(self.shapes.get(dot.operands[0], ""))
        contracting = re.search(r'lhs_contracting_dim\w*[=":\[{]+([\d",\s]+)', dot.attrs)
        idx = [int(d) for d in re.findall(r"\d+", contracting.group(1))] if contracting else []
        k = 1
        for d in idx:
            k *= lhs[d] if d < len(lhs) else 1
        out = _dims(dot.shape)
        dtype = ARRAY.search(self.shapes.get(dot.operands[0], ""))
        op = re.search(r'op_name="([^"]+)"', dot.attrs)
        return 2.0 * _prod(",".join(map(str, out))) * k, dtype.group(1) if dtype else "?", op.group(1) if op else ""

    def _bytes(self, ins: Instr) -> float:
        if ins.opcode != "fusion":
            return shape_bytes(ins.shape) + sum(shape_bytes(self.shapes.get(o, "")) for o in ins.operands)
        callee = (_called(ins.attrs, "calls") or [""])[0]
        body = self.comps.get(callee, [])
        params = {i.name: int(re.search(r"\d+", i.operands[0] or "0").group()) for i in body
                  if i.opcode == "parameter" and i.operands}
        users: dict[str, list[Instr]] = {}
        for i in body:
            for n in i.operands:
                users.setdefault(n, []).append(i)
        read = 0.0
        for pname, index in params.items():
            if index >= len(ins.operands):
                continue
            us = users.get(pname, [])
            if us and all(u.opcode in ("dynamic-slice", "slice") for u in us):
                read += sum(shape_bytes(u.shape) for u in us)
            elif us and all(u.opcode == "dynamic-update-slice" and u.operands[0] == pname for u in us):
                continue  # updated in place
            else:
                read += shape_bytes(self.shapes.get(ins.operands[index], ""))
        root = body[-1] if body else None
        written = shape_bytes(ins.shape)
        if root is not None and root.opcode == "dynamic-update-slice" and len(root.operands) > 1:
            written = shape_bytes(self.shapes.get(root.operands[1], ""))
        return read + written

    def walk(self, comp: str | None = None, times: float = 1.0, facts: Facts | None = None) -> Facts:
        """Facts of ``comp`` (default: the entry) run ``times`` times."""
        facts = facts or Facts()
        for ins in self.comps.get(comp or self.entry, []):
            if ins.opcode == "while":
                trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.attrs)
                for body in _called(ins.attrs, "body"):
                    self.walk(body, times * (int(trip.group(1)) if trip else self.unknown_trips), facts)
                continue
            if ins.opcode == "conditional":
                branches = _called(ins.attrs, "branch_computations") or (
                    _called(ins.attrs, "true_computation") + _called(ins.attrs, "false_computation"))
                for b in branches:
                    self.walk(b, times / len(branches), facts)
                continue
            if ins.opcode in ("call", "async-start") and "to_apply" in ins.attrs + ins.opcode:
                for c in _called(ins.attrs, "to_apply") + _called(ins.attrs, "calls"):
                    self.walk(c, times, facts)
                continue
            if ins.opcode in FREE:
                continue
            kind = self._kind(ins)
            flops, dtype, op = self._gemm_flops(ins) if kind == "gemm" else (0.0, "", "")
            if kind == "attention":
                q, kv = (_dims(self.shapes.get(o, "")) for o in (ins.operands + ["", ""])[:2])
                flops = 4.0 * _prod(",".join(map(str, q))) * (kv[1] if len(kv) > 1 else 0)
            nbytes = self._bytes(ins)
            facts.kernels += times
            facts.kinds[kind] += times
            facts.flops += flops * times
            facts.bytes += nbytes * times
            facts.seconds += max(flops / self.gpu.peak_flops, nbytes / self.gpu.bandwidth) * times
            if kind == "gemm" and dtype == "f32":
                facts.f32_gemms.append(op if op.endswith("dot_general") else ins.shape.split("{")[0])
            if kind.startswith("custom"):
                facts.custom_calls[kind[7:]] += times
        return facts

    def block_body(self, layers: int) -> str | None:
        """The ``while`` body that runs the transformer's blocks (trip count ``layers``)."""
        for comp in self.comps.values():
            for ins in comp:
                if ins.opcode == "while" and f'"known_trip_count":{{"n":"{layers}"}}' in ins.attrs:
                    return _called(ins.attrs, "body")[0]
        return None


def measure(job: Job) -> dict:
    record = {"topology": job.topology.name, "program": job.program, "seconds": job.seconds, "layers": job.layers,
              "unit": job.unit, "settings": plan_memory.TRANSFORMER_SETTINGS, "jax": jax.__version__,
              "date": time.strftime("%Y-%m-%d")}
    start = time.perf_counter()
    try:
        compiled = lower(job).compile()
    except jax.errors.JaxRuntimeError as e:
        return record | {"error": str(e).splitlines()[0][:300], "compile_seconds": round(time.perf_counter() - start, 1)}
    m = compiled.memory_analysis()
    walker = Walker(compiled.as_text(), GPUS[job.topology.gpu], STEPS if job.program == "loop" else 1)
    facts = walker.walk()
    body = walker.block_body(job.layers) if job.layers else None
    block = walker.walk(body) if body else Facts()
    return record | {
        "compile_seconds": round(time.perf_counter() - start, 1),
        "arguments": m.argument_size_in_bytes, "temporaries": m.temp_size_in_bytes,
        "peak": m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes,
        "kernels": facts.kernels, "kinds": dict(facts.kinds), "flops": facts.flops, "bytes": facts.bytes,
        "roofline_seconds": facts.seconds, "f32_gemms": sorted(set(facts.f32_gemms)),
        "custom_calls": dict(facts.custom_calls), "host_transfers": facts.kinds.get("host transfer", 0),
        "block_kernels": block.kernels, "block_kinds": dict(block.kinds),
    }


# ----------------------------------------------------------------------------- tables
def whole_depths(program: str) -> tuple[int, ...]:
    """The depths a whole-program figure comes from: full depth where it compiles, else two to extrapolate."""
    return (LAYERS,) if LAYERS in DEPTHS[program] else DEPTHS[program]


def figure(records: dict, t: str, program: str, seconds: float, name: str, unit: int = 1):
    got = {d: records.get((t, program, seconds, d, unit)) for d in whole_depths(program)}
    if None in got.values() or any(r.get("error") for r in got.values()):
        return None
    values = {d or LAYERS: r[name] for d, r in got.items()}
    return values.get(LAYERS) if len(values) == 1 else at_depth(values)


def key(record: dict) -> tuple:
    return record["topology"], record["program"], record["seconds"], record["layers"], record["unit"]


def load(path: Path) -> dict:
    """The records of ``path`` compiled with this run's transformer settings (``--gpu-settings``);
    records of older programs, which name no settings, stay in the file as history."""
    if not path.exists():
        return {}
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {key(r): r for r in records if r.get("settings") == plan_memory.TRANSFORMER_SETTINGS}


def table(records: dict, tops: list[str], programs) -> str:
    head = ("| GPUs | program | args / temp / peak GB per GPU | largest batch per GPU | kernels (per block*) | "
            "transposes / copies (per block*) | f32 GEMMs | custom calls | host transfers | TFLOP | GB moved | "
            "roofline ms |")
    rows = [head, "|---" * (head.count("|") - 1) + "|"]
    for t in tops:
        gpu, n = t.split(":")
        for program in programs:
            for seconds in DURATIONS.get(program, (240.0,)):
                f = functools.partial(figure, records, t, program, seconds)
                errors = [r["error"] for k, r in records.items() if k[:3] == (t, program, seconds) and r.get("error")]
                if f("peak") is None:
                    if errors:
                        rows.append(f"| {t} | {program} {seconds:.0f} s | compiler refused: {errors[0][:120]} |"
                                    + " |" * 9)
                    continue
                sample = next(r for k, r in records.items() if k[:3] == (t, program, seconds) and not r.get("error"))
                twice = f("peak", 2)
                memory = GPUS[gpu].memory
                fit = "-" if twice is None else (
                    "none" if f("peak") > memory else str(1 + int((memory - f("peak")) // max(twice - f("peak"), 1))))
                runs = {d: records.get((t, program, seconds, d, 1)) for d in DEPTHS[program]}
                kinds = {k: at_depth({d or LAYERS: runs[d]["kinds"].get(k, 0) for d in whole_depths(program)}) or 0
                         for k in ("transpose", "copy")}
                bk = {k: sample["block_kinds"].get(k, 0) for k in ("transpose", "copy")} | {"": sample["block_kernels"]}
                (a, ra), (b, rb) = list(runs.items())[:2] if len(runs) >= 2 else ((0, None), (0, None))
                if ra and rb and not (ra.get("error") or rb.get("error")):  # what one more block adds
                    bk = {k: (rb["kinds"].get(k, 0) - ra["kinds"].get(k, 0)) / (b - a) for k in ("transpose", "copy")}
                    bk[""] = (rb["kernels"] - ra["kernels"]) / (b - a)
                rows.append(
                    f"| {GPUS[gpu].label} x{n} | {program} {seconds:.0f} s | {f('arguments') / GB:.2f} / "
                    f"{f('temporaries') / GB:.2f} / {f('peak') / GB:.2f} | {fit} | {f('kernels'):.0f} "
                    f"({bk['']:.0f}) | {kinds['transpose']:.0f} / {kinds['copy']:.0f} "
                    f"({bk['transpose']:.0f} / {bk['copy']:.0f}) | {len(sample['f32_gemms'])} | "
                    f"{sum(sample['custom_calls'].values()):.0f} | {sample['host_transfers']:.0f} | "
                    f"{f('flops') / 1e12:.1f} | {f('bytes') / GB:.1f} | {f('roofline_seconds') * 1e3:.1f} |")
    return "\n".join(rows)


def rtf_table(records: dict, tops: list[str]) -> str:
    """Roofline RTF of one song (loop + codec: in bfloat16 where compiled, as GPUs decode by default), 27 steps:
    a LOWER BOUND on the time, so an upper bound on RTF."""
    rows = ["| GPUs | RTF 60 s (roofline, upper bound) | RTF 240 s (roofline, upper bound) | reference, measured, 60 s |",
            "|---|---|---|---|"]
    for t in tops:
        gpu, n = t.split(":")
        cells = []
        for seconds in (60.0, 240.0):
            loop = figure(records, t, "loop", seconds, "roofline_seconds")
            codec = figure(records, t, "codec-bf16", seconds, "roofline_seconds")
            codec = codec if codec is not None else figure(records, t, "codec", seconds, "roofline_seconds")
            if loop is None:
                cells.append("-")
            else:  # the codec's decode where it compiled
                rtf = seconds * int(n) / (loop + (codec or 0.0))
                cells.append(f"{rtf:.1f}x" + (" (loop only: no codec compile)" if codec is None else ""))
        ref = f"{REFERENCE_RTF[gpu]}x" if gpu in REFERENCE_RTF and n == "1" else "-"
        rows.append(f"| {GPUS[gpu].label} x{n} | {cells[0]} | {cells[1]} | {ref} |")
    return "\n".join(rows)


CHECK_FIRST = """A real GPU run should check first (in this order; benchmarks/gpu_first_run.sh runs 1-3):
1. the guided call's time (bench_step.py --full --batch 1) against its roofline ms: the gap is launch
   overhead and kernels below roofline, the figures this plan cannot see; and against --settings default
   (the CPU/TPU form), which also checks the GPU settings' numbers on real hardware;
2. the whole loop's RTF at 60 s (bench_generate.py --full --seconds 60 --batch 1) against the roofline RTF
   and the reference's measured 27.3x (A100) / 34.5x (RTX 4090);
3. peak memory (bench_generate.py reports it) against the plan's peak, and the largest batch;
4. the LoRA step time (train.py with configs/train_lora.json: train/seconds_per_log) against its roofline."""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gpus", nargs="+", choices=sorted(GPUS))
    p.add_argument("--count", nargs="+", type=int, default=[1, 8], help="GPUs in the host")
    p.add_argument("--programs", nargs="+", choices=PROGRAMS, default=list(PROGRAMS))
    p.add_argument("--results", type=Path, default=Path("gpu_plans.jsonl"))
    p.add_argument("--no-fit", action="store_true", help="skip the compiles at twice the batch")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--gpu-settings", action="store_true",
                   help="compile the transformer as GPUs load it (models.transformer.gpu_transformer_settings: cuDNN "
                        "cross-attention, unrolled blocks, head-major linear attention); default: as CPUs and TPUs")
    args = p.parse_args(argv)
    plan_memory.TRANSFORMER_SETTINGS = gpu_transformer_settings("cuda") if args.gpu_settings else {}
    if jax.devices()[0].platform != "cpu":
        p.error("run with JAX_PLATFORMS=cpu: the GPU compiler runs here without a GPU")
    records = load(args.results)
    names = [f"{g}:{n}" for g in args.gpus for n in args.count]
    if not args.table_only:
        tops = [topology(g, n) for g in args.gpus for n in args.count]
        todo = [j for t in tops for prog in args.programs for j in jobs(t, prog, not args.no_fit)
                if j.key not in records]
        print(f"jax {jax.__version__}: {len(todo)} compiles to run, {len(records)} recorded", flush=True)
        for i, job in enumerate(todo, 1):
            record = measure(job)
            append(args.results, record)
            records[job.key] = record
            got = record.get("error") or f"peak {record['peak'] / GB:.2f} GB, {record['kernels']:.0f} kernels"
            print(f"[{i}/{len(todo)}] {job.key}: {got}, {record['compile_seconds']} s", flush=True)
    print("\n" + table(records, names, args.programs) + "\n\n" + rtf_table(records, names))
    print(f"\nRoofline times are LOWER BOUNDS ({STEPS} steps); RTFs from them are upper bounds.\n\n" + CHECK_FIRST)
    return 0


if __name__ == "__main__":
    sys.exit(main())
