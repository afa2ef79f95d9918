"""The client contract suite: catdog.client against the local server (and a real TF Serving when
CATDOG_TFSERVING_GRPC=host:port / CATDOG_TFSERVING_REST=http://host:port name one serving the
same export), over gRPC and REST alike."""

import base64
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from catdog import contract, export, images, inference, serve, wire
from catdog import model as model_lib
from catdog.client import Client
from catdog.wire import ServingError
from conftest import class_image, free_ports, run_catdog

CLASS_NAMES = ("cats", "dogs")
IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small classifier and its exports: (model, h5 path, SavedModel base path)."""
    keras.utils.set_random_seed(0)
    model = model_lib.build_classifier(len(CLASS_NAMES), IMAGE_SIZE, "none")
    root = tmp_path_factory.mktemp("export")
    exports = export.export_all(model, CLASS_NAMES, root, "catdog")
    return model, exports.h5, exports.saved_model.parent


@pytest.fixture(scope="module")
def local_server(exported):
    server = serve.start_server("catdog", exported[2], port=0, rest_api_port=0,
                                max_request_bytes=256 << 10)
    yield server
    server.stop()


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


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(4)
    paths = []
    for i, name in enumerate(["cats", "dogs", "cats"]):
        path = folder / f"{name}{i}.jpg"
        Image.fromarray(class_image(name, rng, size=(60, 45))).save(path, quality=90)
        paths.append(path)
    return paths


def expected_probabilities(model, paths):
    pixels = np.stack([tf.cast(images.load_image(tf.constant(str(p)), IMAGE_SIZE), tf.float32)
                       for p in paths])
    return model(pixels, training=False).numpy()


# --- answers agree everywhere -----------------------------------------------------------------

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
    assert [p.label for p in predictions] == [CLASS_NAMES[i] for i in from_h5.argmax(axis=1)]
    assert [p.probability for p in predictions] == pytest.approx(from_h5.max(axis=1), abs=1e-5)


def test_classify_returns_every_class_with_its_score(client, exported, jpegs):
    expected = expected_probabilities(exported[0], jpegs)
    results = client.classify(jpegs)
    assert [sorted(r) for r in results] == [list(CLASS_NAMES)] * len(jpegs)
    for result, row in zip(results, expected):
        assert [result[name] for name in CLASS_NAMES] == pytest.approx(row, abs=1e-5)


def test_predict_pixels_signature(client, exported):
    pixels = np.random.default_rng(0).integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3))
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
        "dtype": "float32", "shape": [-1, IMAGE_SIZE, IMAGE_SIZE, 3]}
    assert metadata["classify"]["method"] == "tensorflow/serving/classify"


def test_status_reports_the_served_version_available(client):
    assert client.status() == [{"version": 1, "state": "AVAILABLE", "error_message": ""}]


# --- bad requests get TF Serving's status, and the server goes on ------------------------------

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
        "wrong_shape": (contract.PREDICT_PIXELS,
                        {"pixels": np.zeros((1, 10, 10, 3), np.float32)}),
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
    assert healthy.predict(jpegs[:1])[0].label in CLASS_NAMES


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
    assert code == 200 and [c for c, _ in classified["results"][0]] == list(CLASS_NAMES)
    assert post(local_server, "/v1/models/catdog:regress", b'{"examples": []}')[0] == 400
    assert post(local_server, "/v1/elsewhere", b"{}")[0] == 400  # TF Serving: Malformed request
    assert post(local_server, "/elsewhere", b"{}")[0] == 404  # no handler at all
    with urllib.request.urlopen(
            f"http://127.0.0.1:{local_server.rest_port}/v1/models/catdog") as response:
        assert json.loads(response.read()) == {"model_version_status": [{
            "version": "1", "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]}


# --- load -------------------------------------------------------------------------------------

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
    assert all(label in CLASS_NAMES for r in results for label in r)


def test_a_new_version_is_picked_up(exported, tmp_path, jpegs):
    model, _, _ = exported
    base = tmp_path / "catdog"
    export.export_saved_model(model, CLASS_NAMES, base)
    server = serve.start_server("catdog", base, port=0, rest_api_port=None,
                                file_system_poll_wait_seconds=60)
    try:
        client = Client(f"grpc://127.0.0.1:{server.grpc_port}", "catdog")
        assert client.status()[0]["version"] == 1
        export.export_saved_model(model, CLASS_NAMES, base)
        server.core.refresh()  # what the poller does every --file_system_poll_wait_seconds
        assert client.status()[0]["version"] == 2
        assert client.predict(jpegs[:1])[0].label in CLASS_NAMES
    finally:
        server.stop()


# --- the command lines ------------------------------------------------------------------------

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
            assert path == str(jpegs[0]) and label in CLASS_NAMES and 0.5 <= float(probability)
            assert "missing.jpg\terror: cannot read image" in result.stderr
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_refuses_a_base_path_without_versions(tmp_path):
    result = run_catdog("serve", f"--model_base_path={tmp_path}", "--port=0", "--rest_api_port=0")
    assert result.returncode == 2
    assert "holds no loadable version" in result.stderr


# --- client behaviour when the server is away or silent --------------------------------------

@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_client_retries_unavailable_with_backoff_then_reports_it(scheme, monkeypatch):
    pauses = []
    monkeypatch.setattr("catdog.client.time.sleep", pauses.append)
    client = Client(f"{scheme}://127.0.0.1:{free_ports(1)[0]}", "catdog", timeout=5, retries=3,
                    backoff_seconds=0.1)
    with pytest.raises(ServingError) as error:
        client.status()
    assert error.value.code == grpc.StatusCode.UNAVAILABLE
    assert pauses == [0.1, 0.2, 0.4]


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_client_times_out_on_a_silent_server(scheme):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        client = Client(f"{scheme}://127.0.0.1:{silent.getsockname()[1]}", "catdog",
                        timeout=0.5, retries=0)
        with pytest.raises(ServingError) as error:
            client.status()
    assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


# --- TF Serving's example clients and shipped configs -----------------------------------------

def _expected_class_id(model, jpeg: Path) -> int:
    return int(np.argmax(exported_probabilities(model, jpeg)))


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
    assert len(result) == len(CLASS_NAMES)
    assert np.argmax(result) == _expected_class_id(exported[0], jpegs[0])


def test_shipped_models_config_serves_its_labels(exported, tmp_path, jpegs):
    """serving/models.config as shipped (its base path moved here): latest 2 versions,
    labels stable → 1 and canary → 2."""
    model = exported[0]
    base = tmp_path / "catdog"
    for _ in range(2):
        export.export_saved_model(model, CLASS_NAMES, base)
    shipped = (Path(__file__).resolve().parents[1] / "serving" / "models.config").read_text()
    config = tmp_path / "models.config"
    config.write_text(shipped.replace('"/models/catdog"', f'"{base}"'))
    server = serve.start_server(options=serve.ServerOptions(
        port=0, rest_api_port=0, model_config_file=str(config)))
    try:
        rest = f"http://127.0.0.1:{server.rest_port}"
        assert [s["version"] for s in Client(rest).status()] == [1, 2]
        for label, version in (("stable", 1), ("canary", 2)):
            request = urllib.request.Request(f"{rest}/v1/models/catdog/labels/{label}")
            with urllib.request.urlopen(request, timeout=30) as response:
                body = json.loads(response.read())
            assert body["model_version_status"][0]["version"] == str(version)
            code, answer = post(server, f"/v1/models/catdog/labels/{label}:predict", json.dumps(
                {"instances": [{"b64": base64.b64encode(jpegs[0].read_bytes()).decode()}]}
            ).encode())
            assert code == 200 and answer["predictions"][0]["classes"] in CLASS_NAMES
    finally:
        server.stop()


def test_batching_merges_concurrent_requests_and_keeps_answers(exported, tmp_path, jpegs):
    """--enable_batching with serving/batching.config: 8 concurrent clients get the answers an
    unbatched server gives."""
    batching = Path(__file__).resolve().parents[1] / "serving" / "batching.config"
    server = serve.start_server("catdog", exported[2], port=0, rest_api_port=None,
                                enable_batching=True, batching_parameters_file=str(batching))
    try:
        url = f"grpc://127.0.0.1:{server.grpc_port}"
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            batched = list(pool.map(lambda i: Client(url).predict([jpegs[i % len(jpegs)]])[0],
                                    range(16)))
        for i, prediction in enumerate(batched):
            alone = exported_probabilities(exported[0], jpegs[i % len(jpegs)])
            np.testing.assert_allclose(prediction.probabilities, alone, atol=1e-5)
    finally:
        server.stop()


def exported_probabilities(model, jpeg: Path) -> np.ndarray:
    pixels = tf.cast(images.resize_image(images.decode_image(jpeg.read_bytes()), IMAGE_SIZE),
                     tf.float32)[None]
    return model(pixels, training=False)[0].numpy()


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
