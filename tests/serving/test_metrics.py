"""catdog.serving.metrics: TF Serving's Prometheus page (S testPrometheusEndpoint, P
util/prometheus_exporter_test.cc)."""

from __future__ import annotations

import urllib.error
import urllib.request

from catdog.serving.metrics import MAX_UNSERVED_NAMES, OTHER_MODELS, Metrics

from tfserving_models import rest


def test_prometheus_endpoint(tfs_server):
    """S testPrometheusEndpoint; P's layout and TF Serving's metric names."""
    rest(tfs_server, "POST", "/v1/models/default:predict", '{"instances": [2.0]}')
    url = f"http://127.0.0.1:{tfs_server.rest_port}/monitoring/prometheus/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        page = response.read().decode()
    assert "# TYPE :tensorflow:serving:request_count counter" in page
    assert ':tensorflow:serving:request_count{model_name="default",status="OK"}' in page
    assert "# TYPE :tensorflow:serving:request_latency histogram" in page
    assert (':tensorflow:serving:request_latency_bucket{model_name="default",API="predict",'
            'entrypoint="REST",le="10"}') in page


def _series(page: str) -> list[str]:
    return [line for line in page.splitlines() if line and not line.startswith("#")]


def test_a_model_name_with_a_newline_or_quote_keeps_the_page_valid():
    """The exposition format escapes backslash, double quote and line feed in label values."""
    metrics = Metrics()
    metrics.record('bad"name\nwith\\', "predict", "REST", "NOT_FOUND", None)
    (line,) = [s for s in _series(metrics.page()) if "request_count" in s]
    assert line == (':tensorflow:serving:request_count{model_name="bad\\"name\\nwith\\\\",'
                    'status="NOT_FOUND"} 1')


def test_names_of_unserved_models_create_a_bounded_number_of_series():
    metrics = Metrics(is_served=lambda name: name == "catdog")
    for i in range(1000):
        metrics.record(f"probe{i}", "predict", "REST", "NOT_FOUND", None)
    metrics.record("catdog", "predict", "REST", "OK", 12.0)
    names = {s.split('model_name="')[1].split('"')[0] for s in _series(metrics.page())}
    assert len(names) == MAX_UNSERVED_NAMES + 2 and {"catdog", OTHER_MODELS} <= names
