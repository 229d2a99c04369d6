"""The benchmark scripts run (speed itself is measured by running them, never asserted in tests)."""

from benchmarks import bench_generate, bench_lyrics_memory, bench_output, bench_serve, bench_step


def test_benchmarks_print_their_tables(capsys):
    assert bench_generate.main(["--seconds", "2", "--steps", "3", "--repeats", "1", "--dtype", "float32"]) == 0
    assert bench_step.main(["--seconds", "2", "--iters", "2", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "| seconds | steps | batch |" in out and "| 2 | 3 | 1 |" in out
    assert "compiled variants after 3 timesteps: 1" in out and "send 0, recv 0, outfeed 0" in out


def test_output_and_lyric_memory_benchmarks_run(capsys):
    assert bench_output.main(["--seconds", "1", "--repeats", "1", "--format", "wav"]) == 0
    assert bench_lyrics_memory.main(["--chars", "--tokens", "100", "--query-block", "32"]) == 0
    out = capsys.readouterr().out
    assert "| host numpy (copy 44.1 kHz out, resample) |" in out and "OutputWriter.submit returns" in out
    assert "| 100 | 32 |" in out


def test_serving_benchmark_runs(capsys):
    # the tiny models and the serving tests' shapes, so the programs are mostly compiled already
    assert bench_serve.main(["--tiny", "--requests", "4", "--seconds", "0.3", "0.5", "--steps", "2",
                             "--batch-sizes", "1,4", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "| sequential | 1 | 4 | 1.00 |" in out and "| batched | 1,4 |" in out and "batched / sequential:" in out


def test_plan_batch_search_and_random_checkpoint_writer(tmp_path):
    import numpy as np

    from acestep_jax.convert.core import SafetensorsSource
    from benchmarks.bench_convert import measure, write_random_safetensors
    from benchmarks.plan_memory import Compiled, largest_fit

    # the batch search: peak = 10 + 3 * batch (GB) fits 80 GB up to batch 23
    calls = []

    def fake(b):
        calls.append(b)
        return Compiled(10e9, 0, 0, 3e9 * b, 0.0, None)

    assert largest_fit(fake, 80e9, 1) == (23, fake(23)) and len(calls) <= 5
    assert largest_fit(fake, 5e9, 1)[0] is None

    path = tmp_path / "w.safetensors"
    write_random_safetensors(path, {"a": {"shape": [3, 5], "dtype": "float32"},
                                    "b": {"shape": [7], "dtype": "float32"}}, seed=0)
    src = SafetensorsSource(path)
    assert src.shape("a") == (3, 5) and src.get("b").shape == (7,) and np.isfinite(src.get("a")).all()
    m = measure(["python", "-c", "x = bytearray(50_000_000); import time; time.sleep(0.5)"])
    assert m["returncode"] == 0 and m["RssAnon"] > 40e6


def test_plan_programs_lower_at_full_size():
    """The planned full-size programs trace from abstract shapes (the plans compile them)."""
    import jax

    from acestep_jax.sharding import make_mesh
    from benchmarks.plan_memory import lower_guided_decode, lower_sample, lower_train

    mesh = make_mesh(1, 2, 1, devices=jax.devices()[:2])
    for lowered in (lower_train("lora", "full", 2, 1, mesh)[0], lower_sample(2, mesh)[0], lower_guided_decode(1, mesh)):
        assert "stablehlo" in lowered.as_text()[:10_000]


def test_tpu_plan_extrapolates_depth_and_batch_from_recorded_compiles(tmp_path):
    """Memory from scanned 2- and 4-block programs and time from 1- and 2-block twins reach 24
    blocks linearly; twice the batch gives the largest batch; records resume from the file."""
    import jax

    from benchmarks import plan_tpu

    assert plan_tpu.at_depth({1: 0.75, 2: 1.0}) == 6.5  # 0.75 + 23 * 0.25
    assert plan_tpu.at_depth({2: 3.0, 4: 5.0}) == 25.0 and plan_tpu.at_depth({24: 7.0}) == 7.0
    assert plan_tpu.at_depth({1: -1.0, 2: -2.0}) is None  # the cost model's "no figure"

    top = plan_tpu.Topology("v5p:2x2x2", tuple(jax.devices()[:8]))
    path = tmp_path / "plans.jsonl"

    def record(kind, layers, unit, peak, seconds=None):
        plan_tpu.append(path, {"topology": top.name, "program": "lora", "kind": kind, "layers": layers,
                               "unit": unit, "arguments": peak / 2, "temporaries": peak / 2, "peak": peak,
                               "optimal_seconds": seconds, "compile_seconds": 10.0})

    # per chip: 4 GB + 1 GB per block at one example; each further example adds 0.5 GB per block
    record("scan", 2, 1, 6e9), record("scan", 4, 1, 8e9), record("scan", 2, 2, 7e9), record("scan", 4, 2, 10e9)
    record("twin", 1, 1, 1e9, 0.02), record("twin", 2, 1, 2e9, 0.03)
    records = plan_tpu.load(path)
    assert {j.key for j in plan_tpu.jobs(top, "lora", fit=True)} == set(records)
    assert {(j.kind, j.layers) for j in plan_tpu.jobs(top, "loop", fit=False)} == {("scan", 2), ("scan", 4)}

    plan = plan_tpu.plan_of(records, top.name, "lora")
    assert abs(plan.peak - 28e9) < 1 and abs(plan.arguments - 14e9) < 1 and abs(plan.per_unit - 12e9) < 1
    assert abs(plan.seconds - 0.25) < 1e-12 and plan.compile_seconds == 60.0
    assert plan.largest_units(95e9) == 6 and plan.largest_units(20e9) is None  # 28 + 5 * 12 <= 95 < 28 + 6 * 12
    row = plan_tpu.table(records, [top], ["lora"]).splitlines()[2]
    assert "| 1x8x1 | 14.00 / 14.00 / 28.00 | 60 | 0.250 |" in row and row.endswith("| 6 (48 examples in all) |")

    plan_tpu.append(path, {"topology": top.name, "program": "full", "kind": "scan", "layers": 4, "unit": 1,
                           "arguments": None, "temporaries": None, "peak": None, "optimal_seconds": None,
                           "compile_seconds": 5.0, "error": "RESOURCE_EXHAUSTED: out of HBM"})
    records = plan_tpu.load(path)
    assert plan_tpu.plan_of(records, top.name, "full") is None
    assert "compiler refused: RESOURCE_EXHAUSTED" in plan_tpu.table(records, [top], ["full"])

def test_decode_benchmarks_run(capsys):
    from benchmarks import bench_new_duration, plan_decode

    assert bench_new_duration.main(["--durations", "1.3", "--steps", "1"]) == 0
    assert plan_decode.main(["--preset", "tiny", "--seconds", "2", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "new 1.3 s:" in out and "0 programs" in out and "'temporaries_gib'" in out
