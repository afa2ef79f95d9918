"""catdog.serve, the local TF Serving stand-in, held to what TF Serving does.

Three kinds of test, each against a running server:
- TF Serving's own tests replayed (tensorflow/serving, tensorflow_serving/...), each naming the
  test it ports: H model_servers/http_rest_api_handler_test.cc (REST routes, bodies, statuses),
  S model_servers/tensorflow_model_server_test.py (gRPC and REST end to end), M
  servables/tensorflow/testdata/*_metadata.json (recorded metadata bodies), on TF Serving's test
  models (tests/tfserving_models.py). Expected values are TF Serving's, never produced by the code
  under test. Set CATDOG_TFSERVING_TESTDATA to a TF Serving checkout's
  servables/tensorflow/testdata to also compare metadata with the recorded files.
- The catdog model served, through catdog.client over gRPC and REST (and a real TF Serving when
  CATDOG_TFSERVING_GRPC=host:port / CATDOG_TFSERVING_REST=http://host:port serve the same export),
  with TF Serving's example clients and the command lines.
- Hostile requests, a bounded seeded fuzz and idle connections against `python -m catdog.serve`
  in its own process, so a crash shows as a dead process: after every one the same process must
  still answer a good request, and no answer may be UNKNOWN.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     predict_pb2, prediction_service_pb2_grpc)

from catdog import contract, export, inference, serve, wire
from catdog import model as model_lib
from catdog.client import Client
from catdog.wire import ServingError
from conftest import (CLASSES, SERVED_IMAGE_SIZE, TINY_PNG, expected_probabilities, free_ports,
                      run_catdog)
from tfserving_models import TWO_VERSIONS, recorded_metadata, rest


# --- H, S, M: TF Serving's tests replayed ----------------------------------------------------------

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
def test_unsupported_api_calls_are_invalid_argument(tfs_server, method, path, message):
    """H UnsupportedApiCalls: INVALID_ARGUMENT (HTTP 400) with TF Serving's message."""
    status, body = rest(tfs_server, method, path, "" if method == "POST" else None)
    assert status == 400 and message in body["error"]


@pytest.mark.parametrize("path", ["/v1/models/foo:predict", "/v1/models/foo/versions/50:predict",
                                  f"/v1/models/{TWO_VERSIONS}/versions/99:predict"])
def test_predict_unknown_model_or_version_is_not_found(tfs_server, path):
    """H PredictModelNameVersionErrors."""
    status, _ = rest(tfs_server, "POST", path, '{ "instances": [1] }')
    assert status == 404


@pytest.mark.parametrize("path,body,message", [
    (":predict", "", "JSON Parse error: The document is empty"),
    (":predict", "instances = [1, 2]", "JSON Parse error: Invalid value"),
    (":predict", '{ "instances": ["x", "y"] }', "not of expected type: float"),
    ("/labels/Version_Nonexistent:predict", '{ "instances": ["x", "y"] }',
     "Unrecognized servable version label"),
    (":predict", '{ "signature_name": 100 }', "'signature_name' key must be a string value."),
])
def test_predict_request_errors(tfs_server, path, body, message):
    """H PredictRequestErrors: each is INVALID_ARGUMENT."""
    status, answer = rest(tfs_server, "POST", f"/v1/models/{TWO_VERSIONS}{path}", body)
    assert status == 400 and message in answer["error"]


STATUS_123 = {"model_version_status": [{"version": "123", "state": "AVAILABLE",
                                        "status": {"error_code": "OK", "error_message": ""}}]}


@pytest.mark.parametrize("suffix", ["", "/versions/123", "/labels/Version_Label"])
def test_get_status(tfs_server, suffix):
    """H GetStatus; S testGetStatusREST."""
    assert rest(tfs_server, "GET", f"/v1/models/{TWO_VERSIONS}{suffix}") == (200, STATUS_123)


def _sorted(value):
    """S SortedObject: metadata has no order, so compare it sorted."""
    if isinstance(value, dict):
        return sorted((k, _sorted(v)) for k, v in value.items())
    if isinstance(value, list):
        return sorted((_sorted(v) for v in value), key=repr)
    return value


def test_get_model_metadata_is_the_recorded_body(tfs_server):
    """H GetModelMetadata; S testGetModelMetadataREST (no "@type", signature_def twice)."""
    status, body = rest(tfs_server, "GET", f"/v1/models/{TWO_VERSIONS}/metadata")
    assert status == 200
    assert _sorted(body) == _sorted(recorded_metadata(TWO_VERSIONS))
    recorded = os.environ.get("CATDOG_TFSERVING_TESTDATA")
    if recorded:
        path = Path(recorded) / "saved_model_half_plus_two_2_versions_metadata.json"
        assert _sorted(body) == _sorted(json.loads(path.read_text()))


def test_get_model_status_grpc(tfs_stubs):
    """S testGetModelStatus."""
    result = tfs_stubs[1].GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec={"name": "default"}), 20)
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].status.error_code == 0


def test_get_model_metadata_grpc(tfs_stubs):
    """S testGetModelMetadata."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "default"},
                                                             metadata_field=["signature_def"])
    result = tfs_stubs[0].GetModelMetadata(request, 20)
    assert result.model_spec.name == "default" and result.model_spec.version.value == 123
    assert list(result.metadata) == ["signature_def"]


@pytest.mark.parametrize("verb,body,expected", [
    ("classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]},
     {"results": [[["", 3.0]]]}),
    ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]},
     {"results": [3.0]}),
    ("predict", {"instances": [2.0, 3.0, 4.0]}, {"predictions": [3.0, 3.5, 4.0]}),
    ("predict", {"inputs": [2.0, 3.0, 4.0]}, {"outputs": [3.0, 3.5, 4.0]}),
])
def test_rest_end_to_end(tfs_server, verb, body, expected):
    """S testClassifyREST, testRegressREST, testPredictREST, testPredictColumnarREST."""
    assert rest(tfs_server, "POST", f"/v1/models/default:{verb}", json.dumps(body)) == (200, expected)


# --- the catdog model, through catdog.client -------------------------------------------------------

def _targets():
    targets = [pytest.param(("local", "grpc"), id="local-grpc"),
               pytest.param(("local", "rest"), id="local-rest")]
    for transport, variable in (("grpc", "CATDOG_TFSERVING_GRPC"),
                                ("rest", "CATDOG_TFSERVING_REST")):
        targets.append(pytest.param(("real", transport), id=f"tfserving-{transport}", marks=(
            pytest.mark.skipif(not os.environ.get(variable),
                               reason=f"set {variable} to run against a real TF Serving"),)))
    return targets


@pytest.fixture(params=_targets())
def server_url(request, local_server):
    where, transport = request.param
    if where == "real":
        value = os.environ["CATDOG_TFSERVING_GRPC" if transport == "grpc" else
                           "CATDOG_TFSERVING_REST"]
        return f"grpc://{value}" if transport == "grpc" else value
    if transport == "grpc":
        return f"grpc://127.0.0.1:{local_server.grpc_port}"
    return f"http://127.0.0.1:{local_server.rest_port}"


@pytest.fixture
def client(server_url):
    client = Client(server_url, "catdog", timeout=30)
    yield client
    client.close()


def test_predict_agrees_with_keras_h5_and_savedmodel_in_process(client, exported, jpegs):
    model, h5_path, base = exported
    predictions = client.predict(jpegs)
    h5_model, _ = inference.load_h5(h5_path)
    from_h5 = expected_probabilities(h5_model, jpegs)
    in_process = tf.saved_model.load(str(base / "1")).signatures["serving_default"](
        image_bytes=tf.constant([p.read_bytes() for p in jpegs]))["probabilities"].numpy()
    served = np.array([p.probabilities for p in predictions])
    np.testing.assert_allclose(served, from_h5, atol=1e-5)
    np.testing.assert_allclose(served, in_process, atol=1e-5)
    assert [p.label for p in predictions] == [CLASSES[i] for i in from_h5.argmax(axis=1)]
    assert [p.probability for p in predictions] == pytest.approx(from_h5.max(axis=1), abs=1e-5)


def test_classify_returns_every_class_with_its_score(client, exported, jpegs):
    expected = expected_probabilities(exported[0], jpegs)
    results = client.classify(jpegs)
    assert [sorted(r) for r in results] == [list(CLASSES)] * len(jpegs)
    for result, row in zip(results, expected):
        assert [result[name] for name in CLASSES] == pytest.approx(row, abs=1e-5)


def test_predict_pixels_signature(client, exported):
    pixels = np.random.default_rng(0).integers(0, 256, (2, SERVED_IMAGE_SIZE, SERVED_IMAGE_SIZE, 3))
    outputs = client.predict_raw(contract.PREDICT_PIXELS,
                                 {contract.PIXELS: pixels.astype(np.float32)})
    np.testing.assert_allclose(outputs["probabilities"],
                               exported[0](pixels.astype("float32")).numpy(), atol=1e-5)


def test_metadata_lists_the_three_signatures(client):
    metadata = client.metadata()
    assert {"serving_default", "predict_pixels", "classify"} <= set(metadata)
    assert metadata["serving_default"]["inputs"] == {
        "image_bytes": {"dtype": "string", "shape": None}}  # one image [] or a batch [N]
    assert metadata["predict_pixels"]["inputs"]["pixels"] == {
        "dtype": "float32", "shape": [-1, SERVED_IMAGE_SIZE, SERVED_IMAGE_SIZE, 3]}
    assert metadata["classify"]["method"] == "tensorflow/serving/classify"


def test_status_reports_the_served_version_available(client):
    assert client.status() == [{"version": 1, "state": "AVAILABLE", "error_message": ""}]


# --- bad requests get TF Serving's status, and the server goes on ----------------------------------

@pytest.mark.parametrize("case, code", [
    ("non_image", grpc.StatusCode.INVALID_ARGUMENT),
    ("wrong_dtype", grpc.StatusCode.INVALID_ARGUMENT),
    ("wrong_shape", None),  # the graph's error, as in TF Serving
    ("unknown_input", grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown_model", grpc.StatusCode.NOT_FOUND),
    ("unknown_version", grpc.StatusCode.NOT_FOUND),
    ("unknown_signature", grpc.StatusCode.FAILED_PRECONDITION),
    ("oversized", grpc.StatusCode.RESOURCE_EXHAUSTED),
])
def test_bad_request_gets_its_status_and_the_server_keeps_serving(server_url, case, code, jpegs):
    if case == "oversized" and "local" not in _where(server_url):
        pytest.skip("the size cap is the local server's --max_request_bytes")
    model = "nope" if case == "unknown_model" else "catdog"
    client = Client(server_url, model, version=7 if case == "unknown_version" else None,
                    timeout=30)
    request = {
        "non_image": (contract.SERVING_DEFAULT,
                      {"image_bytes": np.array([b"not an image"], object)}),
        "wrong_dtype": (contract.PREDICT_PIXELS,
                        {"pixels": np.array([b"x"], object)}),
        "wrong_shape": (contract.PREDICT_PIXELS,  # 4 channels: no kernel can take them
                        {"pixels": np.zeros((1, SERVED_IMAGE_SIZE, SERVED_IMAGE_SIZE, 4),
                                            np.float32)}),
        "unknown_input": (contract.SERVING_DEFAULT,
                          {"images": np.array([jpegs[0].read_bytes()], object)}),
        "unknown_signature": ("no_such_signature",
                              {"image_bytes": np.array([jpegs[0].read_bytes()], object)}),
        "oversized": (contract.SERVING_DEFAULT,
                      {"image_bytes": np.array([bytes(300 << 10)], object)}),
    }.get(case, (contract.SERVING_DEFAULT,
                 {"image_bytes": np.array([jpegs[0].read_bytes()], object)}))
    with pytest.raises(ServingError) as error:
        client.predict_raw(*request)
    if code is None:  # TF Serving leaves shapes to the graph: the graph's own error
        assert error.value.code != grpc.StatusCode.OK
    elif server_url.startswith("grpc"):
        assert error.value.code == code
    else:  # REST carries the HTTP status only (FAILED_PRECONDITION and INVALID_ARGUMENT are 400)
        assert wire.http_status(error.value.code) == wire.http_status(code)
    if case == "non_image":  # one line, as the client prints it
        assert "Unknown image file format" in error.value.message
        assert "\n" not in error.value.message
    healthy = Client(server_url, "catdog", timeout=30)
    assert healthy.predict(jpegs[:1])[0].label in CLASSES


def _where(server_url):
    return "local" if "127.0.0.1" in server_url else "real"


def post(local_server, path, body: bytes):
    request = urllib.request.Request(f"http://127.0.0.1:{local_server.rest_port}{path}",
                                     data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "JSON Parse error"),
    (b'{"instances": [{"b64": "%%%"}]}', 400, "Unable to base64 decode"),
    (b'{"instances": [1], "inputs": [1]}', 400, "expecting only one of 'inputs' or 'instances'"),
    (b'{"instances": [{"b64": "aGk=", "x": 1}]}', 400, "does not have named input: b64"),
    (b'{"signature_name": "predict_pixels", "instances": [["a"]]}', 400,
     "is not of expected type: float"),
])
def test_malformed_rest_bodies_are_400_with_an_error_message(local_server, body, status, message,
                                                              jpegs):
    code, document = post(local_server, "/v1/models/catdog:predict", body)
    assert code == status and message in document["error"]
    good = json.dumps({"instances": [{"b64": base64.b64encode(jpegs[0].read_bytes()).decode()}]})
    assert post(local_server, "/v1/models/catdog:predict", good.encode())[0] == 200


def test_rest_row_and_columnar_formats_and_routes(local_server, jpegs):
    b64 = {"b64": base64.b64encode(jpegs[0].read_bytes()).decode()}
    code, row = post(local_server, "/v1/models/catdog/versions/1:predict",
                     json.dumps({"instances": [b64]}).encode())
    assert code == 200 and set(row["predictions"][0]) == {"probabilities", "class_ids", "classes"}
    code, columnar = post(local_server, "/v1/models/catdog:predict",
                          json.dumps({"inputs": {"image_bytes": [b64]}}).encode())
    assert code == 200 and columnar["outputs"]["classes"] == [row["predictions"][0]["classes"]]
    code, classified = post(local_server, "/v1/models/catdog:classify", json.dumps(
        {"signature_name": "classify", "examples": [{"image/encoded": b64}]}).encode())
    assert code == 200 and [c for c, _ in classified["results"][0]] == list(CLASSES)
    assert post(local_server, "/v1/models/catdog:regress", b'{"examples": []}')[0] == 400
    assert post(local_server, "/v1/elsewhere", b"{}")[0] == 400  # TF Serving: Malformed request
    assert post(local_server, "/elsewhere", b"{}")[0] == 404  # no handler at all
    with urllib.request.urlopen(
            f"http://127.0.0.1:{local_server.rest_port}/v1/models/catdog") as response:
        assert json.loads(response.read()) == {"model_version_status": [{
            "version": "1", "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]}


def test_eight_concurrent_clients_of_25_requests_all_succeed(local_server, jpegs):
    urls = [f"grpc://127.0.0.1:{local_server.grpc_port}",
            f"http://127.0.0.1:{local_server.rest_port}"]

    def one_client(i):
        client = Client(urls[i % 2], "catdog", timeout=60)
        try:
            return [client.predict([jpegs[(i + j) % 3]])[0].label for j in range(25)]
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one_client, range(8)))
    assert sum(len(r) for r in results) == 200
    assert all(label in CLASSES for r in results for label in r)


def test_the_served_model_refuses_a_bomb_naming_the_limit(server_url):
    from conftest import png_bomb

    if "127.0.0.1" not in server_url:
        pytest.skip("the local server's export")
    with pytest.raises(ServingError) as error:
        Client(server_url, "catdog", timeout=30).predict([png_bomb()])
    assert wire.http_status(error.value.code) == 400
    assert "--max_image_pixels" in error.value.message


def test_rest_api_timeout_in_ms_answers_deadline_exceeded_after_warm_up(exported, jpegs):
    """--rest_api_timeout_in_ms bounds each request's session run (not the warm-up)."""
    server = serve.start_server("catdog", exported[2], port=0, rest_api_port=0,
                                rest_api_timeout_in_ms=1)
    try:
        with pytest.raises(ServingError) as error:
            Client(f"http://127.0.0.1:{server.rest_port}", timeout=60).predict(jpegs * 4)
        assert wire.http_status(error.value.code) == 504
    finally:
        server.stop()


# --- TF Serving's example clients ------------------------------------------------------------------

def _expected_class_id(model, jpeg: Path) -> int:
    return int(np.argmax(expected_probabilities(model, [jpeg])[0]))


def test_tf_serving_resnet_client_rest_reads_the_label(exported, local_server, jpegs):
    """example/resnet_client.py with MODEL_ACCEPT_JPG: `{"instances": [{"b64": jpeg}]}`, then
    argmax of predictions[0] (its output name, 'probabilities' here, aside)."""
    jpeg_bytes = base64.b64encode(jpegs[1].read_bytes()).decode("utf-8")
    predict_request = '{"instances" : [{"b64": "%s"}]}' % jpeg_bytes
    code, document = post(local_server, "/v1/models/catdog:predict", predict_request.encode())
    prediction = document["predictions"][0]["probabilities"]
    assert code == 200 and np.argmax(prediction) == _expected_class_id(exported[0], jpegs[1])


def test_tf_serving_resnet_client_grpc_reads_the_label(exported, local_server, jpegs):
    """example/resnet_client_grpc.py: one JPEG as a scalar tensor_proto, result read from
    `.float_val` (input and output names aside)."""
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    data_ = jpegs[0].read_bytes()
    channel = grpc.insecure_channel(f"127.0.0.1:{local_server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "catdog"
    request.model_spec.signature_name = "serving_default"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(data_))
    result = stub.Predict(request, 10.0).outputs["probabilities"].float_val
    assert len(result) == len(CLASSES)
    assert np.argmax(result) == _expected_class_id(exported[0], jpegs[0])


# --- the command lines -----------------------------------------------------------------------------

def test_serve_and_client_command_lines(exported, jpegs, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "catdog.serve", f"--model_base_path={exported[2]}", "--port=0",
         f"--rest_api_port={free_ports(1)[0]}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    try:
        banner = process.stdout.readline()
        assert banner.startswith("serving catdog on gRPC 127.0.0.1:"), banner
        grpc_port = banner.split("127.0.0.1:")[1].split()[0]
        rest_url = banner.split("REST ")[1].strip()
        for server in (f"grpc://127.0.0.1:{grpc_port}", rest_url):
            result = run_catdog("client", f"--server={server}", "--model=catdog",
                                str(jpegs[0]), str(tmp_path / "missing.jpg"))
            assert result.returncode == 1
            path, label, probability = result.stdout.strip().split("\t")
            assert path == str(jpegs[0]) and label in CLASSES and 0.5 <= float(probability)
            assert "missing.jpg\terror: cannot read image" in result.stderr
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_refuses_a_base_path_without_versions(tmp_path):
    result = run_catdog("serve", f"--model_base_path={tmp_path}", "--port=0", "--rest_api_port=0")
    assert result.returncode == 2
    assert "holds no loadable version" in result.stderr


# --- hostile requests to a server process ----------------------------------------------------------

@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = model_lib.build_classifier(len(CLASSES), 32, "none")
    root = tmp_path_factory.mktemp("faults")
    return export.export_all(model, CLASSES, root, "catdog").saved_model.parent


@pytest.fixture(scope="module")
def serve_process(model_base):
    """`python -m catdog.serve` in its own process. Its environment asks for TensorFlow's oneDNN
    kernels, which abort a process on some malformed inputs (a rank-2 `pixels`, below): the serve
    command must run without them all the same."""
    grpc_port, rest_port = free_ports(2)
    process = subprocess.Popen(
        [sys.executable, "-m", "catdog.serve", f"--model_base_path={model_base}",
         f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--max_request_bytes=4194304",
         "--max_request_instances=64", "--max_rest_connections=8"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1"})
    assert process.stdout.readline().startswith("serving catdog")
    yield process, grpc_port, rest_port
    process.terminate()
    process.wait(timeout=30)


def assert_still_serving(serve_process):
    process, grpc_port, rest_port = serve_process
    assert process.poll() is None, "the server process died"
    for url in (f"grpc://127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"):
        client = Client(url, timeout=30)
        assert client.predict([TINY_PNG])[0].label in CLASSES
        client.close()


def grpc_predict(serve_process, request: predict_pb2.PredictRequest) -> grpc.StatusCode:
    channel = grpc.insecure_channel(f"127.0.0.1:{serve_process[1]}")
    try:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()
    finally:
        channel.close()


def tensor(dtype, dims, **values) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]), **values)
    return proto


def request_with(signature: str, alias: str, proto) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "catdog", signature
    request.inputs[alias].CopyFrom(proto)
    return request


@pytest.mark.parametrize("signature,alias,proto,code", [
    ("predict_pixels", "pixels", tensor(types_pb2.DT_FLOAT, [20000, 32, 32, 3]),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("serving_default", "image_bytes", tensor(types_pb2.DT_STRING, [10**8]),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("predict_pixels", "pixels", tensor(types_pb2.DT_FLOAT, [2**40, 32, 32, 3]),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("predict_pixels", "pixels", tensor(types_pb2.DT_RESOURCE, [1]),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("predict_pixels", "pixels", tensor(types_pb2.DT_VARIANT, [1]),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("predict_pixels", "pixels", tensor(types_pb2.DT_FLOAT, [1, 32, 32, 3],
                                        tensor_content=b"\0" * 7),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("predict_pixels", "pixels", tensor(types_pb2.DT_FLOAT, [1], float_val=[1.0, 2.0]),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("predict_pixels", "pixels", tensor(types_pb2.DT_FLOAT, [-5, 2]),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("serving_default", "image_bytes", tensor(types_pb2.DT_STRING, [10000],
                                              string_val=[TINY_PNG] * 10000),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
])
def test_hostile_grpc_requests_get_a_status_and_the_server_lives(serve_process, signature, alias, proto,
                                                                  code):
    assert grpc_predict(serve_process, request_with(signature, alias, proto)) == code
    assert_still_serving(serve_process)


def rest_call(serve_process, method: str, path: str, body: bytes = b"", headers=None):
    """(status, JSON body) of a raw HTTP request, with exactly the headers given."""
    with socket.create_connection(("127.0.0.1", serve_process[2]), timeout=60) as connection:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {"Content-Length": len(body)}).items()]
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload) if payload else None


def png_instances(count: int) -> bytes:
    b64 = base64.b64encode(TINY_PNG).decode()
    return json.dumps({"instances": [{"b64": b64}] * count}).encode()


@pytest.mark.parametrize("method,path,body,headers,status", [
    ("POST", "/v1/models/catdog:predict", b'{"instances": ' + b"[" * 100000 + b"]" * 100000 + b"}",
     None, 400),
    ("POST", "/v1/models/catdog:predict",
     b'{"signature_name": "predict_pixels", "instances": [[1e400]]}', None, 400),
    ("POST", "/v1/models/catdog:classify", b'{"examples": [{"x": 99999999999999999999999}]}',
     None, 400),
    ("POST", "/v1/models/catdog:predict", png_instances(10000), None, 429),
    ("POST", f"/v1/models/catdog/versions/{10**30}:predict", b"{}", None, 400),
    ("POST", "/v1/models/catdog:predict", b"{}", {"Content-Length": "-1"}, 400),
    ("POST", "/v1/models/catdog:predict", b"{}", {"Content-Length": "abc"}, 400),
    ("POST", "/v1/models/catdog:predict", b"", {"Content-Length": str(1 << 30)}, 429),
    ("PUT", "/v1/models/catdog:predict", b"{}", None, 400),
    ("DELETE", "/v1/models/catdog", b"", None, 400),
    ("POST", "/v1/models/catdog:predict", b"\xff\xfe not utf-8", None, 400),
])
def test_hostile_rest_requests_get_a_json_error_and_the_server_lives(serve_process, method, path, body,
                                                                      headers, status):
    code, document = rest_call(serve_process, method, path, body, headers)
    assert code == status and isinstance(document["error"], str)
    assert_still_serving(serve_process)


def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.choice(["list", "dict", "str", "int", "float", "b64", "null", "bool"]
                      if depth < 4 else ["str", "int", "float", "null"])
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == "dict":
        keys = ["instances", "inputs", "signature_name", "examples", "context", "image_bytes",
                "pixels", "b64", "x"]
        return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return {"str": lambda: rng.choice(["", "serving_default", "predict_pixels", "classify",
                                       "%%%", "aGk="]),
            "int": lambda: rng.choice([0, -1, 2**63, 2**64, 7]),
            "float": lambda: rng.choice([0.5, -1e308, 1e-320]),
            "b64": lambda: {"b64": base64.b64encode(rng.randbytes(rng.randint(0, 40))).decode()},
            "null": lambda: None, "bool": lambda: rng.random() < 0.5}[kind]()


def test_seeded_fuzz_never_kills_the_server_or_answers_unknown(serve_process):
    """200 random REST bodies and 200 byte-mutated gRPC requests (seed 0)."""
    rng = random.Random(0)
    for _ in range(200):
        verb = rng.choice(["predict", "classify", "regress"])
        code, document = rest_call(serve_process, "POST", f"/v1/models/catdog:{verb}",
                                   json.dumps(_random_json(rng)).encode())
        assert code != 500 or "UNKNOWN" not in document["error"]
        assert code in (200, 400, 404, 429, 501), (code, document)
    valid = request_with("serving_default", "image_bytes",
                         tf.make_tensor_proto([TINY_PNG])).SerializeToString()
    channel = grpc.insecure_channel(f"127.0.0.1:{serve_process[1]}")
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    codes = set()
    for _ in range(200):
        mutated = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            call(bytes(mutated), timeout=60)
            codes.add(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.add(error.code())
    channel.close()
    assert grpc.StatusCode.UNKNOWN not in codes, codes
    assert_still_serving(serve_process)


def test_idle_connections_are_bounded_and_the_server_goes_on(serve_process):
    """More idle connections than --max_rest_connections: the extra ones get 503 at once."""
    idle = [socket.create_connection(("127.0.0.1", serve_process[2])) for _ in range(12)]
    try:
        idle[0].sendall(b"POST /v1/models/catdog:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        code, document = rest_call(serve_process, "GET", "/v1/models/catdog")
        assert code == 503 and "--max_rest_connections" in document["error"]
    finally:
        for connection in idle:
            connection.close()
    deadline = time.monotonic() + 30
    while rest_call(serve_process, "GET", "/v1/models/catdog")[0] == 503:  # slots free as threads end
        assert time.monotonic() < deadline
    assert_still_serving(serve_process)
