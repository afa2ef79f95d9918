"""TF Serving's own expectations, replayed against `catdog.serve`.

Each test names the TF Serving test it ports (tensorflow/serving, tensorflow_serving/...):
  H: model_servers/http_rest_api_handler_test.cc      (REST routes, bodies, statuses)
  S: model_servers/tensorflow_model_server_test.py    (gRPC and REST end to end, configs)
  M: servables/tensorflow/testdata/*_metadata.json    (recorded metadata bodies)
  P: util/prometheus_exporter_test.cc                  (metrics page)
The models are TF Serving's test models (tests/tfserving_models.py). Expected values are TF
Serving's, never produced by the code under test. Set CATDOG_TFSERVING_TESTDATA to a TF Serving
checkout's servables/tensorflow/testdata to also compare metadata with the recorded files byte
for byte after parsing.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc, regression_pb2)

from catdog import serve
from catdog.errors import CatdogError
from tfserving_models import half_plus_two, recorded_metadata

TWO_VERSIONS = "saved_model_half_plus_two_2_versions"  # H's model, policy specific {123}
CONFIG = """
model_config_list {{
  config {{ name: "{two}" base_path: "{root}/two_versions" model_platform: "tensorflow"
           model_version_policy {{ specific {{ versions: 123 }} }}
           version_labels {{ key: "Version_Label" value: 123 }} }}
  config {{ name: "default" base_path: "{root}/half_plus_two" model_platform: "tensorflow" }}
  config {{ name: "half_plus_two" base_path: "{root}/half_plus_two" model_platform: "tensorflow" }}
  config {{ name: "half_plus_three" base_path: "{root}/half_plus_three"
           model_platform: "tensorflow" }}
}}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tfserving_models")
    half_plus_two(root / "two_versions", versions=(123, 124))
    half_plus_two(root / "half_plus_two", versions=(123,))
    half_plus_two(root / "half_plus_three", versions=(123,), b=3.0)
    return root


@pytest.fixture(scope="module")
def server(models):
    config = models / "models.config"
    config.write_text(CONFIG.format(two=TWO_VERSIONS, root=models))
    monitoring = models / "monitoring.config"
    monitoring.write_text('prometheus_config: { enable: true, path: "/monitoring/prometheus/metrics" }')
    server = serve.start_server(options=serve.ServerOptions(
        port=0, rest_api_port=0, model_config_file=str(config),
        monitoring_config_file=str(monitoring)))
    yield server
    server.stop()


def rest(server, method: str, path: str, body: str | None = None) -> tuple[int, object]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}",
                                     data=None if body is None else body.encode(), method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


# --- H: UnsupportedApiCalls, PredictModelNameVersionErrors, PredictRequestErrors -----------------

@pytest.mark.parametrize("method,path,message", [
    ("GET", "/v1/foo", "Malformed request"),
    ("POST", "/v1/foo", "Malformed request"),
    ("GET", "/v1/models", "Missing model name"),
    ("GET", "/v1/models/debug/model_name", "Malformed request"),
    ("POST", "/v1/models", "Malformed request"),
    ("GET", "/v1/models/foo:predict", "Malformed request"),
    ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
    ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
    ("POST", f"/v1/models/foo/versions/{2**64 - 1}:regress", "Failed to convert version"),
    ("POST", "/v1/models/foo/metadata", "Malformed request"),
    ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
])
def test_unsupported_api_calls_are_invalid_argument(server, method, path, message):
    """H UnsupportedApiCalls: INVALID_ARGUMENT (HTTP 400) with TF Serving's message."""
    status, body = rest(server, method, path, "" if method == "POST" else None)
    assert status == 400 and message in body["error"]


@pytest.mark.parametrize("path", ["/v1/models/foo:predict", "/v1/models/foo/versions/50:predict",
                                  f"/v1/models/{TWO_VERSIONS}/versions/99:predict"])
def test_predict_unknown_model_or_version_is_not_found(server, path):
    """H PredictModelNameVersionErrors."""
    status, _ = rest(server, "POST", path, '{ "instances": [1] }')
    assert status == 404


@pytest.mark.parametrize("path,body,message", [
    (":predict", "", "JSON Parse error: The document is empty"),
    (":predict", "instances = [1, 2]", "JSON Parse error: Invalid value"),
    (":predict", '{ "instances": ["x", "y"] }', "not of expected type: float"),
    ("/labels/Version_Nonexistent:predict", '{ "instances": ["x", "y"] }',
     "Unrecognized servable version label"),
    (":predict", '{ "signature_name": 100 }', "'signature_name' key must be a string value."),
])
def test_predict_request_errors(server, path, body, message):
    """H PredictRequestErrors: each is INVALID_ARGUMENT."""
    status, answer = rest(server, "POST", f"/v1/models/{TWO_VERSIONS}{path}", body)
    assert status == 400 and message in answer["error"]


# --- H: Predict, Regress, Classify, GetStatus, GetModelMetadata ---------------------------------

@pytest.mark.parametrize("path,body,expected", [
    (":predict", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}', {"predictions": [[2.5, 3.0],
                                                                            [3.5, 4.0]]}),
    ("/versions/123:predict", '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
    ("/labels/Version_Label:predict", '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
    ("/versions/123:predict", '{"signature_name": "serving_default", "instances": [3.0, 4.0]}',
     {"predictions": [3.5, 4.0]}),
    ("/versions/123:predict", '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}',
     {"outputs": [3.5, 4.0]}),
    (":regress", '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }',
     {"results": [42]}),
    ("/versions/123:regress", '{"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}',
     {"results": [42]}),
    ("/labels/Version_Label:regress",
     '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }', {"results": [42]}),
    (":classify", '{"signature_name": "classify_x_to_y", "examples": [ { "x": 20.0 } ] }',
     {"results": [[["", 12]]]}),
    ("/labels/Version_Label:classify",
     '{"signature_name": "classify_x_to_y", "examples": [ { "x": 10.0 } ] }',
     {"results": [[["", 7]]]}),
])
def test_predict_regress_classify_answer_as_tf_serving(server, path, body, expected):
    """H Predict, Regress, Classify: the exact bodies."""
    assert rest(server, "POST", f"/v1/models/{TWO_VERSIONS}{path}", body) == (200, expected)


STATUS_123 = {"model_version_status": [{"version": "123", "state": "AVAILABLE",
                                        "status": {"error_code": "OK", "error_message": ""}}]}


@pytest.mark.parametrize("suffix", ["", "/versions/123", "/labels/Version_Label"])
def test_get_status(server, suffix):
    """H GetStatus; S testGetStatusREST."""
    assert rest(server, "GET", f"/v1/models/{TWO_VERSIONS}{suffix}") == (200, STATUS_123)


def _sorted(value):
    """S SortedObject: metadata has no order, so compare it sorted."""
    if isinstance(value, dict):
        return sorted((k, _sorted(v)) for k, v in value.items())
    if isinstance(value, list):
        return sorted((_sorted(v) for v in value), key=repr)
    return value


def test_get_model_metadata_is_the_recorded_body(server):
    """H GetModelMetadata; S testGetModelMetadataREST (no "@type", signature_def twice)."""
    status, body = rest(server, "GET", f"/v1/models/{TWO_VERSIONS}/metadata")
    assert status == 200
    assert _sorted(body) == _sorted(recorded_metadata(TWO_VERSIONS))
    recorded = os.environ.get("CATDOG_TFSERVING_TESTDATA")
    if recorded:
        path = Path(recorded) / "saved_model_half_plus_two_2_versions_metadata.json"
        assert _sorted(body) == _sorted(json.loads(path.read_text()))


# --- S: gRPC ------------------------------------------------------------------------------------

def _example_request(request, signature):
    request.model_spec.name = "default"
    request.model_spec.signature_name = signature
    request.input.example_list.examples.add().features.feature["x"].float_list.value.extend([2.0])
    return request


def test_get_model_status_grpc(stubs):
    """S testGetModelStatus."""
    result = stubs[1].GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec={"name": "default"}), 20)
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].status.error_code == 0


def test_get_model_metadata_grpc(stubs):
    """S testGetModelMetadata."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "default"},
                                                             metadata_field=["signature_def"])
    result = stubs[0].GetModelMetadata(request, 20)
    assert result.model_spec.name == "default" and result.model_spec.version.value == 123
    assert list(result.metadata) == ["signature_def"]


def _verify_spec(spec, name, signature, version=123):
    """S _VerifyModelSpec."""
    assert (spec.name, spec.signature_name, spec.version.value) == (name, signature, version)


def test_classify_grpc(stubs):
    """S testClassify."""
    result = stubs[0].Classify(_example_request(classification_pb2.ClassificationRequest(),
                                                "classify_x_to_y"), 20)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    _verify_spec(result.model_spec, "default", "classify_x_to_y")


def test_regress_grpc(stubs):
    """S testRegress."""
    result = stubs[0].Regress(_example_request(regression_pb2.RegressionRequest(),
                                               "regress_x_to_y"), 20)
    assert len(result.result.regressions) == 1 and result.result.regressions[0].value == 3.0
    _verify_spec(result.model_spec, "default", "regress_x_to_y")


def test_multi_inference_grpc(stubs):
    """S testMultiInference."""
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "tensorflow/serving/regress"),
                              ("classify_x_to_y", "tensorflow/serving/classify")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "default", signature
    request.input.example_list.examples.add().features.feature["x"].float_list.value.extend([2.0])
    result = stubs[0].MultiInference(request, 20)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i in range(2):
        _verify_spec(result.results[i].model_spec, "default",
                     request.tasks[i].model_spec.signature_name)


def _verify_predict(stub, model_name, expected, specify_output=True, batch_input=False,
                    signature_name="serving_default"):
    """S VerifyPredictRequest: typed float_val in, typed float_val out."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if batch_input:
        request.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append("y")
    result = stub.Predict(request, 20)
    assert "y" in result.outputs and result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert len(result.outputs["y"].float_val) == 1
    assert result.outputs["y"].float_val[0] == expected
    _verify_spec(result.model_spec, model_name, signature_name)


@pytest.mark.parametrize("model_name,expected", [("half_plus_two", 3.0),
                                                 ("half_plus_three", 4.0)])
@pytest.mark.parametrize("specify_output", [True, False])
def test_good_model_config(stubs, model_name, expected, specify_output):
    """S testGoodModelConfig (and testPredictSavedModel): several models from one config."""
    _verify_predict(stubs[0], model_name, expected, specify_output)


def test_bad_model_config_is_one_line(tmp_path):
    """S testBadModelConfig: TF Serving's words for a config it cannot parse."""
    bad = tmp_path / "bad.config"
    bad.write_text("improperly formatted file")
    with pytest.raises(CatdogError, match="Error parsing text-format "
                                          "tensorflow.serving.ModelServerConfig"):
        serve.start_server(options=serve.ServerOptions(port=0, rest_api_port=None,
                                                       model_config_file=str(bad)))


def test_unknown_version_label_is_invalid_argument_over_grpc(stubs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.version_label = TWO_VERSIONS, "nope"
    with pytest.raises(grpc.RpcError) as error:
        stubs[0].Predict(request, 20)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- S: REST end to end -------------------------------------------------------------------------

@pytest.mark.parametrize("verb,body,expected", [
    ("classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]},
     {"results": [[["", 3.0]]]}),
    ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]},
     {"results": [3.0]}),
    ("predict", {"instances": [2.0, 3.0, 4.0]}, {"predictions": [3.0, 3.5, 4.0]}),
    ("predict", {"inputs": [2.0, 3.0, 4.0]}, {"outputs": [3.0, 3.5, 4.0]}),
])
def test_rest_end_to_end(server, verb, body, expected):
    """S testClassifyREST, testRegressREST, testPredictREST, testPredictColumnarREST."""
    assert rest(server, "POST", f"/v1/models/default:{verb}", json.dumps(body)) == (200, expected)


def test_prometheus_endpoint(server):
    """S testPrometheusEndpoint; P's layout and TF Serving's metric names."""
    rest(server, "POST", "/v1/models/default:predict", '{"instances": [2.0]}')
    url = f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        page = response.read().decode()
    assert "# TYPE :tensorflow:serving:request_count counter" in page
    assert ':tensorflow:serving:request_count{model_name="default",status="OK"}' in page
    assert "# TYPE :tensorflow:serving:request_latency histogram" in page
    assert (':tensorflow:serving:request_latency_bucket{model_name="default",API="predict",'
            'entrypoint="REST",le="10"}') in page


# --- S: SavedModels written by TF2 and Keras ----------------------------------------------------

def _serve_one(base: Path):
    return serve.start_server("default", base, port=0, rest_api_port=None)


def test_tf_saved_model_save(tmp_path):
    """S test_tf_saved_model_save: a scalar-shaped TF2 function (12 = 3·2·2)."""
    root = tf.train.Checkpoint()
    root.v1, root.v2 = tf.Variable(3.), tf.Variable(2.)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    tf.saved_model.save(root, str(tmp_path / "00000123"),
                        root.f.get_concrete_function(tf.TensorSpec(None, tf.float32)))
    server = _serve_one(tmp_path)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        _verify_predict(prediction_service_pb2_grpc.PredictionServiceStub(channel), "default",
                        12.0, specify_output=False)
    finally:
        server.stop()


def test_tf_saved_model_save_multiple_signatures(tmp_path):
    """S test_tf_saved_model_save_multiple_signatures."""
    root = tf.train.Checkpoint()
    root.f = tf.function(lambda x: {"y": 1.}, input_signature=[tf.TensorSpec(None, tf.float32)])
    root.g = tf.function(lambda x: {"y": 2.}, input_signature=[tf.TensorSpec(None, tf.float32)])
    tf.saved_model.save(root, str(tmp_path / "00000123"),
                        signatures={"serving_default": root.f, "custom_signature_key": root.g})
    server = _serve_one(tmp_path)
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
        _verify_predict(stub, "default", 2.0, signature_name="custom_signature_key")
        _verify_predict(stub, "default", 1.0)
    finally:
        server.stop()


def test_version_label_over_grpc(stubs):
    """H Predict via a version label, over gRPC's model_spec.version_label."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.version_label = TWO_VERSIONS, "Version_Label"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]]))
    result = stubs[0].Predict(request, 20)
    assert result.model_spec.version.value == 123 and list(result.outputs["y"].float_val) == [2.5]


def test_model_config_reload(models, tmp_path):
    """S testModelConfigReload: a rewritten --model_config_file is applied on the next poll."""
    config = tmp_path / "model_config.txt"
    base = 'model_config_list: {{ config: {{ name: "{name}", base_path: "{path}", ' \
           'model_platform: "tensorflow" }} }}'
    config.write_text(base.format(name="half_plus_two", path=models / "half_plus_two"))
    server = serve.start_server(options=serve.ServerOptions(
        port=0, rest_api_port=None, model_config_file=str(config),
        model_config_file_poll_wait_seconds=0.1))
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
        _verify_predict(stub, "half_plus_two", 3.0, specify_output=False)
        new = tmp_path / "model_config.new"  # replaced whole, so no poll reads half a file
        new.write_text(base.format(name="half_plus_three", path=models / "half_plus_three"))
        new.replace(config)
        deadline = time.monotonic() + 30
        while {m.name for m in server.core.models()} != {"half_plus_three"}:
            assert time.monotonic() < deadline, "the new config was never applied"
            time.sleep(0.05)
        _verify_predict(stub, "half_plus_three", 4.0, specify_output=False)
    finally:
        server.stop()
