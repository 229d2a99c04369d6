"""Memory plans on paper: the full-size (3.5B) programs compiled ahead of time from abstract shapes.

    python benchmarks/plan_memory.py            # 1 / 8 / 64 fake CPU devices
    python benchmarks/plan_memory.py --quick    # fewer configurations (smoke test)

Nothing is allocated: models are built with ``nnx.eval_shape``, inputs are
``ShapeDtypeStruct``s, and each program is ``jit(...).lower(...).compile()``d for a mesh
of fake CPU devices (``plan_tpu.py`` does the same for TPU chips with the TPU compiler).
Programs:

* ``train``: one optimizer step of :func:`acestep_jax.training.trainer.make_train_step`
  (bf16 compute, float32 master weights, AdamW, clipping, REPA), full fine-tune or LoRA,
  a remat policy, gradient accumulation; 240 s clips (2592 latent frames), 256 prompt
  tokens, 1024 lyric tokens, MERT/mHuBERT targets at 75/50 Hz.
* ``sample``: the whole guided sampling loop of :mod:`acestep_jax.sampling.sampler`
  (APG, ERG tag/lyric/diffusion, Euler) for 240 s songs, bf16 weights, 64 prompt and
  1024 lyric tokens.

Per device: XLA's memory analysis (arguments, outputs, temporaries; peak = arguments +
outputs - donated + temporaries), analytic transformer FLOPs, and the largest batch whose
peak fits the device (found from the compiled sizes at two batches, then compiled to
check).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # fake CPU devices, set before jax starts
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=64"

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from acestep_jax.codec.codec import LATENT_CHANNELS, LATENT_HEIGHT
from acestep_jax.models.transformer.flops import decode_flops
from acestep_jax.nn import abstract_model
from acestep_jax.presets import preset_config
from acestep_jax.sharding import make_mesh, state_shardings

LATENT = (LATENT_CHANNELS, LATENT_HEIGHT)  # a latent frame's layout
GB = 1e9
SECONDS = 240.0
TRAIN_TEXT, TRAIN_LYRICS = 256, 1024
SAMPLE_TEXT, SAMPLE_LYRICS = 64, 1024
SSL_RATES = {"mert": 75.0, "m-hubert": 50.0}  # frames per second of the REPA targets
STEPS = 27
LORA = {"r": 64, "lora_alpha": 32,
        "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "linear_q", "linear_k", "linear_v", "linear_out"]}


def latent_frames(seconds: float) -> int:
    return int(seconds * 44100 / 512 / 8)


# ----------------------------------------------------------------------------- meshes
@dataclasses.dataclass
class Target:
    """Where programs compile: a device list and the memory of one device."""

    name: str
    devices: list
    memory: float


def cpu_targets(sizes) -> list[Target]:
    devices = jax.devices()
    return [Target(f"cpu x{n}", devices[:n], 80 * GB) for n in sizes]


def train_mesh(n: int, devices):
    """FSDP within 8 devices, data parallel across groups of 8."""
    fsdp = min(n, 8)
    return make_mesh(n // fsdp, fsdp, 1, devices=devices)


def sample_mesh(n: int, batch: int, devices):
    """The batch over ``data`` as far as it divides; the remaining devices shard parameters (fsdp)."""
    data = math.gcd(batch, n)
    return make_mesh(data, n // data, 1, devices=devices)


# ----------------------------------------------------------------------------- compiled facts
@dataclasses.dataclass
class Compiled:
    arguments: float
    outputs: float
    aliased: float
    temporaries: float
    seconds: float  # compile time
    xla_flops: float | None

    @property
    def peak(self) -> float:
        return self.arguments + self.outputs - self.aliased + self.temporaries


def compile_facts(lowered) -> tuple[Compiled, object]:
    t0 = time.perf_counter()
    compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    facts = Compiled(m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes,
                     m.temp_size_in_bytes, seconds, (cost or {}).get("flops"))
    return facts, cost


def sds(shape, dtype, sharding=None):
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def with_shardings(tree, shardings):
    return jax.tree.map(lambda x, s: sds(x.shape, x.dtype, s), tree, shardings)


# ----------------------------------------------------------------------------- training
def train_config(mode: str, remat: str, accum: int, global_batch: int):
    from acestep_jax.training.config import TrainConfig

    model = {"transformer": "full", "dtype": "bfloat16", "param_dtype": "float32",
             "remat": remat, "lora": LORA if mode == "lora" else None}
    return TrainConfig.from_dict({"model": model, "data": {"batch_size": global_batch},
                                  "optim": {"grad_accum": accum}})


# TransformerConfig values of every lowered sampling program (plan_gpu.py --gpu-settings: gpu_transformer_settings);
# the training programs take them without unroll_blocks, as the trainer does (with_layers)
TRANSFORMER_SETTINGS: dict = {}


def with_layers(tcfg, layers: int | None, training: bool = False):
    """``tcfg`` with :data:`TRANSFORMER_SETTINGS` (``training``: without ``unroll_blocks``, as the
    trainer's ``gpu_transformer_settings(training=True)``), cut to ``layers`` blocks (REPA heads on
    the first) for the plans' shallow programs."""
    settings = {k: v for k, v in TRANSFORMER_SETTINGS.items() if not (training and k == "unroll_blocks")}
    tcfg = dataclasses.replace(tcfg, **settings)
    if layers is None:
        return tcfg
    return dataclasses.replace(tcfg, num_layers=layers, ssl_encoder_depths=(0,) * len(tcfg.ssl_encoder_depths))


def lower_train(mode: str, remat: str, accum: int, per_device: int, mesh, layers: int | None = None):
    """The lowered train step for ``per_device`` examples per device and micro-batch
    (``layers``: with that many blocks)."""
    from acestep_jax.lora import LoraConfig, add_lora, freeze_in_compute_dtype
    from acestep_jax.models.transformer import ACEStepTransformer
    from acestep_jax.training.optim import make_optimizer
    from acestep_jax.training.trainer import BATCH_AXES, make_train_step, transformer_config

    ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
    global_batch = per_device * ways
    cfg = train_config(mode, remat, accum, global_batch)
    tcfg = with_layers(transformer_config(cfg), layers, training=True)

    def build():
        model = ACEStepTransformer(tcfg, rngs=nnx.Rngs(0))
        if mode == "lora":  # as the trainer builds it
            add_lora(model, LoraConfig.from_dict(LORA), nnx.Rngs(1))
            freeze_in_compute_dtype(model)
        return model

    model = nnx.eval_shape(build)
    graphdef, params, frozen = nnx.split(model, nnx.LoRAParam if mode == "lora" else nnx.Param, ...)
    tx = make_optimizer(cfg.optim)
    replicated = NamedSharding(mesh, P())
    param_sh, frozen_sh = state_shardings(params, mesh), state_shardings(frozen, mesh)
    opt_abs = jax.eval_shape(tx.init, params)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, opt_abs, param_sh, transform_non_params=lambda _: replicated,
                                   is_leaf=lambda x: isinstance(x, NamedSharding))
    state_sh = {"step": replicated, "params": param_sh, "opt_state": opt_sh, "key": replicated}
    state = {"step": sds((), jnp.int32), "params": params, "opt_state": opt_abs, "key": sds((2,), jnp.uint32)}
    batch = train_batch(accum, global_batch, tcfg)
    batch_sh = NamedSharding(mesh, P(None, BATCH_AXES))
    step = jax.jit(make_train_step(graphdef, cfg, tx), in_shardings=(state_sh, frozen_sh, batch_sh),
                   out_shardings=(state_sh, replicated), donate_argnums=(0,))
    with jax.set_mesh(mesh):
        return step.lower(state, frozen, batch), tcfg


def train_batch(accum: int, b: int, tcfg) -> dict:
    t = -(-latent_frames(SECONDS) // 16) * 16
    batch = {
        "latents": sds((accum, b, *LATENT, t), jnp.float32), "frame_mask": sds((accum, b, t), jnp.int32),
        "text_states": sds((accum, b, TRAIN_TEXT, tcfg.text_embedding_dim), jnp.float32),
        "text_mask": sds((accum, b, TRAIN_TEXT), jnp.int32), "speaker": sds((accum, b, 512), jnp.float32),
        "lyric_ids": sds((accum, b, TRAIN_LYRICS), jnp.int32), "lyric_mask": sds((accum, b, TRAIN_LYRICS), jnp.int32),
    }
    for name, dim in zip(tcfg.ssl_names, tcfg.ssl_latent_dims):
        s = -(-int(SECONDS * SSL_RATES[name]) // 16) * 16
        batch[f"ssl/{name}"] = sds((accum, b, s, dim), jnp.float32)
        batch[f"ssl_len/{name}"] = sds((accum, b), jnp.int32)
    return batch


def train_flops(tcfg, remat: str, accum: int, global_batch: int) -> float:
    """Transformer FLOPs of one step: forward, backward (2x forward) and the remat recompute."""
    context = 1 + TRAIN_TEXT + TRAIN_LYRICS
    forward = decode_flops(tcfg, 1, latent_frames(SECONDS), context)
    passes = {"none": 3, "dots": 3, "full": 4}[remat]  # dots recomputes only elementwise work
    return passes * forward * accum * global_batch


# ----------------------------------------------------------------------------- sampling
def lower_sample(batch: int, mesh, layers: int | None = None, seconds: float = SECONDS, preset: str = "full",
                 task: str = "text2music", bucket: bool = False):
    """The lowered guided sampling loop (the reference's defaults) for ``batch`` songs of
    ``seconds`` (``layers``: with that many blocks; ``preset``: the model's sizes; ``task``:
    ``text2music`` or ``edit``, whose source latents are ``seconds`` long; ``bucket``: padded to
    its length bucket, as the command line and the service run it)."""
    from acestep_jax.codec.codec import seconds_to_frames
    from acestep_jax.models.transformer import ACEStepTransformer
    from acestep_jax.sampling import Conditioning, Noise, SamplingParams
    from acestep_jax.sampling.inputs import LoopInputs
    from acestep_jax.sampling.sampler import edit_loop, loop_compiler_options, text2music_loop
    from acestep_jax.sampling.tasks import frame_multiple, prepare

    tcfg = with_layers(preset_config(preset, "transformer", dtype="bfloat16", param_dtype="bfloat16"), layers)
    model = abstract_model(lambda r: ACEStepTransformer(tcfg, rngs=r))
    graphdef, state = nnx.split(model)
    params = SamplingParams(task=task, duration=seconds, infer_steps=STEPS, bucket=bucket)
    by_batch = NamedSharding(mesh, P("data"))
    d = tcfg.text_embedding_dim
    text = {"text": sds((batch, SAMPLE_TEXT, d), jnp.float32), "text_mask": sds((batch, SAMPLE_TEXT), jnp.int32),
            "lyric_ids": sds((batch, SAMPLE_LYRICS), jnp.int32), "lyric_mask": sds((batch, SAMPLE_LYRICS), jnp.int32),
            "speaker": sds((batch, 512), jnp.float32)}
    cond = Conditioning(**text, text_null=sds((batch, SAMPLE_TEXT, d), jnp.float32))
    if task == "edit":
        cond = dataclasses.replace(cond, src_latents=sds((batch, *LATENT, seconds_to_frames(seconds)), jnp.float32),
                                   **{f"target_{k}": v for k, v in text.items()})
    noise = Noise.from_seeds(list(range(batch)))
    found = {}
    platform = mesh.devices.flat[0].platform

    def inputs_of(c, n):
        lc, inputs, _ = prepare(params, c, n, frame_multiple(platform))
        found["lc"] = lc
        return inputs

    inputs = jax.eval_shape(inputs_of, cond, noise)
    lc = found["lc"]
    replicated = NamedSharding(mesh, P())
    in_sh = LoopInputs(jax.tree.map(lambda _: by_batch, inputs.latents), jax.tree.map(lambda _: by_batch, inputs.items),
                       jax.tree.map(lambda _: replicated, inputs.schedule))
    loop = edit_loop if task == "edit" else text2music_loop
    fn = jax.jit(lambda s, c, i, n: loop(nnx.merge(graphdef, s), lc, c, i, n),
                 compiler_options=loop_compiler_options(platform),
                 in_shardings=(state_shardings(state, mesh), jax.tree.map(lambda _: by_batch, cond),
                               in_sh, jax.tree.map(lambda _: by_batch, noise)),
                 out_shardings=by_batch)
    with jax.set_mesh(mesh):
        return fn.lower(state, cond, inputs, jax.tree.map(lambda a: sds(a.shape, a.dtype), noise)), tcfg


def lower_guided_decode(batch: int, mesh, layers: int | None = None, preset: str = "full"):
    """One guided transformer call (cond + uncond: ``2 * batch`` items), as the sampling loop makes it
    (``layers``: with that many blocks; ``preset``: the model's sizes)."""
    from acestep_jax.models.transformer import ACEStepTransformer

    tcfg = with_layers(preset_config(preset, "transformer", dtype="bfloat16", param_dtype="bfloat16"), layers)
    model = abstract_model(lambda r: ACEStepTransformer(tcfg, rngs=r))
    graphdef, state = nnx.split(model)
    n, t = 2 * batch, -(-latent_frames(SECONDS) // 128) * 128
    ctx = 1 + SAMPLE_TEXT + SAMPLE_LYRICS
    by_batch = NamedSharding(mesh, P(("data", "fsdp")))

    def decode(s, x, mask, c, cm, ts):
        return nnx.merge(graphdef, s).decode(x, mask, c, cm, ts, isolate_padding=True)

    from acestep_jax.sampling.sampler import loop_compiler_options

    fn = jax.jit(decode, in_shardings=(state_shardings(state, mesh),) + (by_batch,) * 5, out_shardings=by_batch,
                 compiler_options=loop_compiler_options(mesh.devices.flat[0].platform))
    args = (sds((n, *LATENT, t), jnp.float32), sds((n, t), jnp.float32), sds((n, ctx, tcfg.inner_dim), jnp.bfloat16),
            sds((n, ctx), jnp.float32), sds((n,), jnp.float32))
    with jax.set_mesh(mesh):
        return fn.lower(state, *args)


def sample_flops(tcfg, batch: int) -> float:
    """Transformer FLOPs of a whole generation: guided steps run 2x the batch, the rest 1x."""
    from acestep_jax.sampling import SamplingParams
    from benchmarks.bench_generate import transformer_calls

    guided, plain = transformer_calls(SamplingParams(duration=SECONDS, infer_steps=STEPS))
    per_item = decode_flops(tcfg, 1, latent_frames(SECONDS), 1 + SAMPLE_TEXT + SAMPLE_LYRICS)
    return per_item * batch * (2 * guided + plain)


# ----------------------------------------------------------------------------- largest batch
def largest_fit(measure, limit: float, unit: int, cap: int = 4096) -> tuple[int | None, Compiled | None]:
    """The largest multiple of ``unit`` whose compiled peak fits ``limit`` (``measure(b) -> Compiled``).

    Peaks grow linearly in the batch: two compiles give the line, a third checks the
    predicted batch (stepping down while it does not fit)."""
    one = measure(unit)
    if one.peak > limit:
        return None, one
    two = measure(2 * unit)
    per = max(two.peak - one.peak, 1.0)
    b = min(cap, unit * max(1, int((limit - one.peak) // per) + 1))
    while b > 2 * unit:
        facts = measure(b)
        if facts.peak <= limit:
            return b, facts
        b -= unit * max(1, int((facts.peak - limit) // per) + 1)
    return (2 * unit, two) if two.peak <= limit else (unit, one)


# ----------------------------------------------------------------------------- reporting
def fmt_gb(x: float) -> str:
    return f"{x / GB:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", nargs="+", type=int, default=[1, 8, 64], help="CPU mesh sizes")
    p.add_argument("--quick", action="store_true", help="one remat policy, no LoRA/accumulation variants")
    p.add_argument("--no-fit", action="store_true", help="skip the largest-batch search")
    p.add_argument("--programs", nargs="+", choices=("train", "sample"), default=["train", "sample"],
                   help="which programs to plan")
    args = p.parse_args(argv)
    targets = cpu_targets(args.devices)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform} host, {time.strftime('%Y-%m-%d')}; "
          "compiler: XLA CPU")
    variants = [("full", "full", 1)]  # (mode, remat, accumulation); the largest batch for remat "full" only
    if not args.quick:
        variants += [("lora", "full", 1), ("full", "dots", 1), ("full", "full", 4)]

    if "train" in args.programs:
        plan_training(targets, variants, args)
    if "sample" in args.programs:
        plan_sampling(targets, args)
    return 0


def plan_training(targets, variants, args) -> None:
    print("\n### Training step (per device; batch = examples per device per micro-batch)\n")
    head = ("| target | mesh | mode | remat | accum | batch | args GB | out GB | temp GB | peak GB | compile s | "
            "TFLOP/step | largest batch |")
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    for target in targets:
        n = len(target.devices)
        mesh = train_mesh(n, target.devices)
        shape = "x".join(f"{mesh.shape[a]}" for a in ("data", "fsdp", "tensor"))
        for mode, remat, accum in variants:
            def measure(b, mode=mode, remat=remat, accum=accum, mesh=mesh):
                return compile_facts(lower_train(mode, remat, accum, b, mesh)[0])[0]

            lowered, tcfg = lower_train(mode, remat, accum, 1, mesh)
            facts, _ = compile_facts(lowered)
            ways = mesh.shape["data"] * mesh.shape["fsdp"]
            flops = train_flops(tcfg, remat, accum, ways)
            row = (f"| {target.name} | {shape} | {mode} | {remat} | {accum} | 1 | {fmt_gb(facts.arguments)} | "
                   f"{fmt_gb(facts.outputs)} | {fmt_gb(facts.temporaries)} | {fmt_gb(facts.peak)} | "
                   f"{facts.seconds:.1f} | {flops / 1e12:.0f} |")
            searched = not args.no_fit and remat == "full" and accum == 1
            fit = (largest_fit(measure, target.memory, 1)[0] or "none") if searched else "-"
            print(row + f" {fit} |", flush=True)


def plan_sampling(targets, args) -> None:
    print("\n### Guided sampling loop, 240 s (per device; batch = songs in all)\n")
    head = ("| target | mesh | batch | args GB | out GB | temp GB | peak GB | compile s | TFLOP/song set | "
            "largest batch |")
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    for target in targets:
        n = len(target.devices)
        for batch in (1, 8, 32):
            mesh = sample_mesh(n, batch, target.devices)
            shape = "x".join(f"{mesh.shape[a]}" for a in ("data", "fsdp", "tensor"))
            lowered, tcfg = lower_sample(batch, mesh)
            facts, _ = compile_facts(lowered)
            row = (f"| {target.name} | {shape} | {batch} | {fmt_gb(facts.arguments)} | {fmt_gb(facts.outputs)} | "
                   f"{fmt_gb(facts.temporaries)} | {fmt_gb(facts.peak)} | {facts.seconds:.1f} | "
                   f"{sample_flops(tcfg, batch) / 1e12:.0f} |")
            fit = "-"
            if batch == 32 and not args.no_fit:
                def measure(b, n=n, target=target):
                    return compile_facts(lower_sample(b, sample_mesh(n, b, target.devices))[0])[0]

                fit = largest_fit(measure, target.memory, n)[0] or "none"
            print(row + f" {fit} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
