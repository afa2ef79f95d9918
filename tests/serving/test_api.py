"""catdog.serving.api: every call, through both transports, on the catdog model.

The catdog model served, through catdog.client over gRPC and REST (and a real TF Serving when
CATDOG_TFSERVING_GRPC=host:port / CATDOG_TFSERVING_REST=http://host:port serve the same export):
answers equal the in-process model's, bad requests get TF Serving's status and the server goes
on, and TF Serving's own example clients read the answers.
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from catdog import contract, inference
from catdog.serving import status
from catdog.serving.client import Client
from catdog.serving.server import start_server
from catdog.serving.status import ServingError

from conftest import CLASSES, SERVED_IMAGE_SIZE, expected_probabilities, post


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
        assert status.http_status(error.value.code) == status.http_status(code)
    if case == "non_image":  # one line, as the client prints it
        assert "Unknown image file format" in error.value.message
        assert "\n" not in error.value.message
    healthy = Client(server_url, "catdog", timeout=30)
    assert healthy.predict(jpegs[:1])[0].label in CLASSES


def _where(server_url):
    return "local" if "127.0.0.1" in server_url else "real"


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
    assert status.http_status(error.value.code) == 400
    assert "--max_image_pixels" in error.value.message


def test_rest_api_timeout_in_ms_answers_deadline_exceeded_after_warm_up(exported, jpegs):
    """--rest_api_timeout_in_ms bounds each request's session run (not the warm-up)."""
    server = start_server("catdog", exported[2], port=0, rest_api_port=0,
                          rest_api_timeout_in_ms=1)
    try:
        with pytest.raises(ServingError) as error:
            Client(f"http://127.0.0.1:{server.rest_port}", timeout=60).predict(jpegs * 4)
        assert status.http_status(error.value.code) == 504
    finally:
        server.stop()


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
