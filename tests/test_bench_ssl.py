"""The SSL benchmark script runs (its speed is measured by running it, never asserted here)."""

from benchmarks import bench_ssl
from tests.helpers import golden_root


def test_bench_ssl_prints_its_table(capsys):
    config = golden_root() / "ssl" / "hubert_group_postln" / "config.json"
    assert bench_ssl.main(["--config", str(config), "--models", "mert", "--iters", "1"]) == 0
    out = capsys.readouterr().out
    assert "| model | params | dtype |" in out
    assert "| mert | " in out and out.rstrip().endswith("| 1 |")  # one compiled program
