"""benchmarks/plan_gpu.py: the tiny model's guided call and sampling loop, compiled by XLA's GPU
compiler for the H100 target without a GPU, keep the structure the GPU program is held to.

Runs only where jax's CUDA plugin is installed (the ``plan-gpu`` extra, about 3.4 GB); elsewhere it
skips. The HLO walker's arithmetic is checked on a hand-made module everywhere.
"""

import json
import os

import pytest

from benchmarks.plan_gpu import GPUS, Walker

# per transformer block, as GPUs load the model (issue 25's limits; the scanned CPU/TPU form, compiled
# for GPU too, copies each block's weights out of the stacked parameters and is held to none)
LIMITS = {"kernels": 30, "transpose": 2, "copy": 0}

HLO = """HloModule m

%gemm (p0: bf16[32,64], p1: bf16[64,16]) -> bf16[32,16] {
  %p0 = bf16[32,64]{1,0} parameter(0)
  %p1 = bf16[64,16]{1,0} parameter(1)
  ROOT %d = bf16[32,16]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="x"}
}

%body (t: (s32[], bf16[32,64], bf16[64,16])) -> (s32[], bf16[32,64], bf16[64,16]) {
  %t = (s32[], bf16[32,64]{1,0}, bf16[64,16]{1,0}) parameter(0)
  %a = bf16[32,64]{1,0} get-tuple-element(%t), index=1
  %b = bf16[64,16]{1,0} get-tuple-element(%t), index=2
  %g = bf16[32,16]{1,0} fusion(%a, %b), kind=kCustom, calls=%gemm
  %c = bf16[32,64]{1,0} copy(%a)
  ROOT %r = (s32[], bf16[32,64]{1,0}, bf16[64,16]{1,0}) tuple(%g, %c, %b)
}

ENTRY %main (x: bf16[32,64], w: bf16[64,16]) -> bf16[32,64] {
  %x = bf16[32,64]{1,0} parameter(0)
  %w = bf16[64,16]{1,0} parameter(1)
  %t = (s32[], bf16[32,64]{1,0}, bf16[64,16]{1,0}) tuple(%x, %x, %w)
  %loop = (s32[], bf16[32,64]{1,0}, bf16[64,16]{1,0}) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %o = bf16[32,64]{1,0} get-tuple-element(%loop), index=1
}
"""


def test_walker_counts_kernels_flops_and_bytes_at_trip_counts():
    walker = Walker(HLO, GPUS["h100"])
    facts = walker.walk()
    assert facts.kinds == {"gemm": 3, "copy": 3}
    assert facts.flops == 3 * 2 * 32 * 16 * 64
    assert facts.bytes == 3 * (2 * (32 * 64 + 64 * 16 + 32 * 16) + 2 * 2 * 32 * 64)
    assert walker.block_body(3) == "body" and walker.walk("body").kernels == 2
    assert facts.seconds == pytest.approx(3 * (2 * (32 * 64 + 64 * 16 + 32 * 16) / 3.35e12 + 4 * 32 * 64 / 3.35e12))


SLICED = """HloModule m

%cut (p0: bf16[4,64,16]) -> bf16[1,64,16] {
  %p0 = bf16[4,64,16]{2,1,0} parameter(0)
  ROOT %s = bf16[1,64,16]{2,1,0} slice(%p0), slice={[1:2], [0:64], [0:16]}
}

ENTRY %main (w: bf16[4,64,16]) -> bf16[1,64,16] {
  %w = bf16[4,64,16]{2,1,0} parameter(0)
  ROOT %wrapped_slice = bf16[1,64,16]{2,1,0} fusion(%w), kind=kLoop, calls=%cut
}
"""


def test_a_fusion_that_only_slices_counts_as_a_copy():
    """XLA wraps a weight cut out of its stack into a fusion of its own: that is a copy."""
    facts = Walker(SLICED, GPUS["h100"]).walk()
    assert facts.kinds == {"copy": 1}
    assert facts.bytes == 2 * 2 * 64 * 16  # the slice read, the slice written


@pytest.fixture(scope="module")
def h100():
    if os.environ.get("ACESTEP_REQUIRE_GPU_COMPILER") != "1":  # CI's plan-gpu venv sets it: no silent skip there
        pytest.importorskip("jax_cuda12_plugin", reason="the plan-gpu extra (jax's CUDA plugin) is not installed")
    from benchmarks.plan_gpu import topology

    return topology("h100", 1)


def _block_facts(h100, program: str, layers: int, settings: dict):
    """Facts of the tiny ``program`` cut to ``layers`` blocks, compiled for the H100 target."""
    from benchmarks import plan_memory
    from benchmarks.plan_memory import lower_guided_decode, lower_sample, sample_mesh

    plan_memory.TRANSFORMER_SETTINGS = settings
    try:
        mesh = sample_mesh(1, 1, list(h100.devices))
        if program == "sample":
            lowered = lower_guided_decode(1, mesh, preset="tiny", layers=layers)
        else:  # 75 frames: padded to 80 on GPU
            lowered = lower_sample(1, mesh, seconds=7.0, preset="tiny", layers=layers)[0]
    finally:
        plan_memory.TRANSFORMER_SETTINGS = {}
    return Walker(lowered.compile().as_text(), GPUS["h100"], 27)


@pytest.mark.parametrize("settings", ["default", "gpu"])
@pytest.mark.parametrize("program", ["sample", "loop"])
def test_tiny_gpu_program_structure(h100, program, settings):
    """No host transfers and no float32 GEMM but the linear attention's sums; as GPUs load the model,
    one fused attention and at most :data:`LIMITS` kernels, transposes and weight copies per block
    (what one more block adds; a sampling step counts half a guided and half a plain call)."""
    from acestep_jax.models.transformer import gpu_transformer_settings
    from acestep_jax.presets import preset_config

    chosen = gpu_transformer_settings("cuda") if settings == "gpu" else {}
    cfg = preset_config("tiny", "transformer")
    walkers = {n: _block_facts(h100, program, n, chosen) for n in (1, 2)}
    facts = walkers[2].walk()
    assert facts.kinds.get("host transfer", 0) == 0
    # the linear attention's sums (named, or by their head-dim shape where XLA dropped the name)
    linear = [op for op in facts.f32_gemms if "self_attention" in op or op.endswith(f",{cfg.attention_head_dim}]")]
    assert linear == facts.f32_gemms
    one = walkers[1].walk()
    steps = 27 if program == "loop" else 1
    block = {k: (facts.kinds.get(k, 0) - one.kinds.get(k, 0)) / steps for k in ("transpose", "copy", "attention")}
    block["kernels"] = (facts.kernels - one.kernels) / steps
    if settings == "gpu":
        assert all(block[k] <= limit for k, limit in LIMITS.items()) and block["attention"] == 1, block


def test_duration_sweep_summary_counts_durations_programs_and_failures(tmp_path):
    """``gpu_durations.py --summary``: one row per GPU, model, task and padding, from one record per
    duration (a duration that shares a compiled program repeats its outcome)."""
    from benchmarks.gpu_durations import summary

    base = {"gpu": "a100", "preset": "full", "layers": 1, "task": "edit", "bucket": False, "jax": "0.10.2"}
    rows = [base | {"seconds": 1.0, "program": "a", "compiled": True, "error": None, "compile_seconds": 60.0},
            base | {"seconds": 2.0, "program": "a", "compiled": False, "error": None, "compile_seconds": 0.0},
            base | {"seconds": 3.0, "program": "b", "compiled": True, "error": "INTERNAL: tiles", "compile_seconds": 60.0},
            {"gpu": "a100", "seconds": [4.0], "error": None}]  # an older format, without programs: ignored
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = summary(path).splitlines()
    assert len(table) == 3
    assert table[2] == "| A100 SXM 80GB | full, 1 block(s) | edit | 16 | every second 1-3 s | 2 | 3 | 2 min |"
