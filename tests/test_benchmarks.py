"""The benchmark scripts run (speed itself is measured by running them, never asserted in tests)."""

from benchmarks import bench_generate, bench_step


def test_benchmarks_print_their_tables(capsys):
    assert bench_generate.main(["--seconds", "2", "--steps", "3", "--repeats", "1", "--dtype", "float32"]) == 0
    assert bench_step.main(["--seconds", "2", "--iters", "2", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "| seconds | steps | batch |" in out and "| 2 | 3 | 1 |" in out
    assert "compiled variants after 3 timesteps: 1" in out and "send 0, recv 0, outfeed 0" in out
