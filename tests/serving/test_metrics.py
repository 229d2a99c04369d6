"""Prometheus text rendering."""

from acestep_jax.serving.metrics import Counter, Gauge, Histogram, Registry


def test_prometheus_text():
    r = Registry()
    c = r.add(Counter("x_total", "things"))
    g = r.add(Gauge("depth", "queue"))
    h = r.add(Histogram("lat_seconds", "latency", buckets=(0.1, 1)))
    c.inc(2, code="200")
    c.inc(route='a"b\\c')
    g.set(3)
    for v in (0.05, 0.5, 5):
        h.observe(v, stage="d")
    lines = r.render().splitlines()
    assert lines[:4] == ["# HELP x_total things", "# TYPE x_total counter", 'x_total{code="200"} 2',
                         'x_total{route="a\\"b\\\\c"} 1']
    assert "depth 3" in lines
    assert [ln for ln in lines if ln.startswith("lat_seconds")] == [
        'lat_seconds_bucket{le="0.1",stage="d"} 1', 'lat_seconds_bucket{le="1",stage="d"} 2',
        'lat_seconds_bucket{le="+Inf",stage="d"} 3', 'lat_seconds_count{stage="d"} 3',
        'lat_seconds_sum{stage="d"} 5.55']
    assert h.count(stage="d") == 3 and c.value(code="200") == 2
