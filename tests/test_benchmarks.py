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
    assert bench_serve.main(["--tiny", "--requests", "6", "--seconds", "0.3", "0.5", "--steps", "2",
                             "--batch-sizes", "1,4", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "| sequential | 1 | 6 | 1.00 |" in out and "| batched | 1,4 |" in out and "batched / sequential:" in out


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


def test_plan_step_time_extrapolates_from_one_and_two_block_twins():
    from types import SimpleNamespace

    from benchmarks.plan_memory import twin_seconds

    def lowered(seconds):
        memory = SimpleNamespace(argument_size_in_bytes=0, output_size_in_bytes=0, alias_size_in_bytes=0,
                                 temp_size_in_bytes=0)
        compiled = SimpleNamespace(memory_analysis=lambda: memory,
                                   cost_analysis=lambda: {"optimal_seconds": seconds, "flops": 1.0})
        return SimpleNamespace(compile=lambda: compiled)

    assert abs(twin_seconds(lambda n: lowered(0.5 + 0.25 * n), 24) - 6.5) < 1e-9  # 0.75 + 23 * 0.25
    assert twin_seconds(lambda n: lowered(-1.0), 24) is None  # the cost model's "no figure"
