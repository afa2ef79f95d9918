"""TF Serving's request metrics in Prometheus' text format, under TF Serving's names.

    :tensorflow:serving:request_count{model_name="m",status="OK"}           (counter)
    :tensorflow:serving:request_latency{model_name="m",API="predict",entrypoint="REST"}
                                             (histogram in microseconds, buckets 10·1.8^i, i<33)

Names, labels, buckets and layout follow servables/tensorflow/util.cc and
util/prometheus_exporter.cc, so dashboards built on TF Serving read these unchanged. Written here
rather than with prometheus_client, which would change what a scraper reads: it names a counter
`..._total` (and adds `..._created`), and writes bucket bounds as `le="10.0"` where TF Serving
writes `le="10"`.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
LATENCY_BUCKETS = tuple(10 * 1.8 ** i for i in range(33))  # Buckets::Exponential(10, 1.8, 33)


def _number(value: float) -> str:
    """absl::StrCat of a double: six significant digits."""
    return "%.6g" % value


def _escaped(value: str) -> str:
    """A label value as the exposition format writes it: backslash, double quote and line feed
    escaped, so no request's model name can break the page."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f'{k}="{_escaped(v)}"' for k, v in pairs)


OTHER_MODELS = "(other)"  # the model_name of requests past MAX_UNSERVED_NAMES unserved names
MAX_UNSERVED_NAMES = 32


class Metrics:
    """Request counts by model and status, latency histograms by model, API and entrypoint.
    Served models are always counted under their name; requests naming other models (any
    client can send any name) create at most MAX_UNSERVED_NAMES more names, and are counted
    under OTHER_MODELS past that."""

    def __init__(self, is_served: Callable[[str], bool] = lambda name: True):
        self._is_served = is_served
        self._unserved: set[str] = set()
        self._lock = threading.Lock()
        self._counts: dict[tuple, int] = {}
        self._latency: dict[tuple, list] = {}  # labels → [bucket counts..., sum]

    def record(self, model_name: str, api: str, entrypoint: str, status: str,
               latency_micros: float | None) -> None:
        """One finished request; latency is recorded for successful ones, as TF Serving does."""
        with self._lock:
            model_name = self._bounded(model_name)
            key = (("model_name", model_name), ("status", status))
            self._counts[key] = self._counts.get(key, 0) + 1
            if latency_micros is not None:
                labels = (("model_name", model_name), ("API", api), ("entrypoint", entrypoint))
                cell = self._latency.setdefault(labels, [0] * (len(LATENCY_BUCKETS) + 1) + [0.0])
                cell[bisect.bisect_left(LATENCY_BUCKETS, latency_micros)] += 1
                cell[-1] += latency_micros

    def _bounded(self, model_name: str) -> str:
        if model_name in self._unserved or self._is_served(model_name):
            return model_name
        if len(self._unserved) < MAX_UNSERVED_NAMES:
            self._unserved.add(model_name)
            return model_name
        return OTHER_MODELS

    def page(self) -> str:
        """The Prometheus exposition page (PrometheusExporter::GeneratePage)."""
        lines = []
        with self._lock:
            lines.append(f"# TYPE {REQUEST_COUNT} counter")
            lines += [f"{REQUEST_COUNT}{{{_labels(k)}}} {n}" for k, n in
                      sorted(self._counts.items())]
            lines.append(f"# TYPE {REQUEST_LATENCY} histogram")
            for labels, cell in sorted(self._latency.items()):
                total = 0
                prefix = f"{REQUEST_LATENCY}_bucket{{{_labels(labels)},"
                for i, count in enumerate(cell[:-1]):
                    total += count
                    limit = _number(LATENCY_BUCKETS[i]) if i < len(LATENCY_BUCKETS) else "+Inf"
                    lines.append(f'{prefix}le="{limit}"}} {total}')
                lines.append(f"{REQUEST_LATENCY}_sum{{{_labels(labels)}}} {_number(cell[-1])}")
                lines.append(f"{REQUEST_LATENCY}_count{{{_labels(labels)}}} {total}")
        return "\n".join(lines) + "\n"
