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
