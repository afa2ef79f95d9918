"""catdog.serving.metrics: TF Serving's Prometheus page (S testPrometheusEndpoint, P
util/prometheus_exporter_test.cc)."""

from __future__ import annotations

import urllib.error
import urllib.request

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
