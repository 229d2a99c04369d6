"""Counters, gauges and histograms rendered in the Prometheus text format (version 0.0.4).

Thread-safe; labels are given as keyword arguments::

    m = ServiceMetrics()
    m.stage_seconds.observe(1.7, stage="diffusion")
    text = m.registry.render()
"""

from __future__ import annotations

import math
import threading

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    esc = {k: str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for k, v in labels.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(esc.items())) + "}"


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str):
        self.name, self.help = name, help
        self._lock = threading.Lock()

    def lines(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", *self.lines()]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str):
        super().__init__(name, help)
        self._values: dict[tuple, float] = {}

    def inc(self, amount: float = 1.0, **labels) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot decrease")
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels) -> float:
        with self._lock:
            return self._values.get(tuple(sorted(labels.items())), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items()) or [((), 0.0)]
        return [f"{self.name}{_labels(dict(k))} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, help: str):
        super().__init__(name, help)
        self._value = 0.0

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def value(self) -> float:
        with self._lock:
            return self._value

    def lines(self) -> list[str]:
        return [f"{self.name} {_number(self.value())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets=LATENCY_BUCKETS):
        super().__init__(name, help)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[tuple, list] = {}  # labels -> [bucket counts..., count, sum]

    def observe(self, value: float, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            s = self._series.setdefault(key, [0] * (len(self.buckets) + 1) + [0.0])
            for i, b in enumerate(self.buckets):
                if value <= b:
                    s[i] += 1
            s[-2] += 1
            s[-1] += value

    def count(self, **labels) -> int:
        with self._lock:
            s = self._series.get(tuple(sorted(labels.items())))
            return 0 if s is None else s[-2]

    def lines(self) -> list[str]:
        out = []
        with self._lock:
            series = sorted((k, list(v)) for k, v in self._series.items())
        for key, s in series:
            labels = dict(key)
            for b, n in zip(self.buckets, s, strict=False):
                out.append(f"{self.name}_bucket{_labels({**labels, 'le': _number(b)})} {n}")
            out.append(f"{self.name}_bucket{_labels({**labels, 'le': '+Inf'})} {s[-2]}")
            out.append(f"{self.name}_count{_labels(labels)} {s[-2]}")
            out.append(f"{self.name}_sum{_labels(labels)} {_number(s[-1])}")
        return out


class Registry:
    def __init__(self):
        self._metrics: list[_Metric] = []

    def add(self, metric):
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(line for m in self._metrics for line in m.render()) + "\n"


class ServiceMetrics:
    """The generation service's metrics (names prefixed ``acestep_``)."""

    def __init__(self):
        r = self.registry = Registry()
        self.queue_depth = r.add(Gauge("acestep_queue_depth", "Outputs waiting in the queue"))
        self.jobs = r.add(Counter("acestep_jobs_total", "Jobs by final status (accepted: every accepted job)"))
        self.rejected = r.add(Counter("acestep_rejected_total", "Requests refused, by reason"))
        self.batches = r.add(Counter("acestep_batches_total", "Batches run"))
        self.batch_items = r.add(Counter("acestep_batch_items_total", "Outputs generated in batches"))
        self.batch_slots = r.add(Counter("acestep_batch_slots_total",
                                         "Batch slots run (outputs plus fillers); items / slots is the occupancy"))
        self.occupancy = r.add(Gauge("acestep_batch_occupancy", "Outputs / batch size of the last batch"))
        self.audio_seconds = r.add(Counter("acestep_audio_seconds_total", "Seconds of audio generated"))
        self.disconnects = r.add(Counter("acestep_disconnects_total",
                                         "Synchronous /generate clients that hung up (their jobs are cancelled)"))
        self.stage_seconds = r.add(Histogram("acestep_stage_seconds",
                                             "Latency per stage (queue, conditioning, diffusion, decode, write)"))
        self.job_seconds = r.add(Histogram("acestep_job_seconds", "Accepted to finished, per job"))
        self.http = r.add(Counter("acestep_http_requests_total", "HTTP responses by method, route and code"))
