"""catdog.serving.client against what TF Serving really sends, not against catdog.serve.

A fake REST server replays TF Serving's bodies: the recorded metadata layout
(servables/tensorflow/testdata/*_metadata.json: no "@type", signature_def nested twice, int64 as
strings), the status body of http_rest_api_handler_test.cc, `{"results": ...}` for classify
(json_tensor_test.cc), bare single outputs and `{"error": ...}` with its HTTP statuses. A fake
gRPC server answers with typed proto fields (float_val, int64_val, string_val), as TF Serving's
Predict does by default.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
from http import server as http_server

import grpc
import pytest
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from catdog.serving.client import Client
from catdog.serving.status import ServingError

from conftest import free_ports
from tfserving_models import recorded_metadata

CATDOG_SIGNATURES = {"signature_def": {
    "serving_default": {
        "inputs": {"image_bytes": {"dtype": "DT_STRING", "name": "serving_default_image_bytes:0",
                                   "tensor_shape": {"dim": [], "unknown_rank": True}}},
        "outputs": {name: {"dtype": dtype, "name": f"StatefulPartitionedCall:{i}",
                           "tensor_shape": {"dim": dims, "unknown_rank": False}}
                    for i, (name, dtype, dims) in enumerate((
                        ("class_ids", "DT_INT64", [{"size": "-1", "name": ""}]),
                        ("classes", "DT_STRING", [{"size": "-1", "name": ""}]),
                        ("probabilities", "DT_FLOAT", [{"size": "-1", "name": ""},
                                                       {"size": "2", "name": ""}])))},
        "method_name": "tensorflow/serving/predict", "defaults": {}},
    "__saved_model_init_op": {
        "inputs": {}, "outputs": {"__saved_model_init_op": {
            "dtype": "DT_INVALID", "name": "NoOp",
            "tensor_shape": {"dim": [], "unknown_rank": True}}},
        "method_name": "", "defaults": {}}}}

# path → (HTTP status, body) as TF Serving writes them.
REPLIES = {
    ("GET", "/v1/models/catdog/metadata"): (200, {
        "model_spec": {"name": "catdog", "signature_name": "", "version": "3"},
        "metadata": {"signature_def": CATDOG_SIGNATURES}}),
    ("GET", "/v1/models/half/metadata"): (200, recorded_metadata("half")),
    ("GET", "/v1/models/catdog"): (200, {"model_version_status": [
        {"version": "3", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                           "error_message": ""}}]}),
    ("POST", "/v1/models/catdog:predict"): (200, {"outputs": {
        "class_ids": [1], "classes": ["dogs"], "probabilities": [[0.25, 0.75]]}}),
    ("POST", "/v1/models/catdog:classify"): (200, {"results": [[["cats", 0.25],
                                                                ["dogs", 0.75]]]}),
    ("POST", "/v1/models/half:predict"): (200, {"outputs": [[3.0]]}),
    ("POST", "/v1/models/nope:predict"): (404, {
        "error": "Servable not found for request: Latest(nope)"}),
}


@pytest.fixture(scope="module")
def fake_rest():
    seen = []

    class Handler(http_server.BaseHTTPRequestHandler):
        def _reply(self, method):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((method, self.path, json.loads(body) if body else None))
            status, document = REPLIES[(method, self.path)]
            payload = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self):
            self._reply("GET")

        def do_POST(self):
            self._reply("POST")

        def log_message(self, *args):
            pass

    server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_rest_predict_reads_tf_serving_outputs(fake_rest):
    url, seen = fake_rest
    (prediction,) = Client(url, "catdog").predict([b"jpeg"])
    assert (prediction.label, prediction.probability, prediction.probabilities) == (
        "dogs", 0.75, (0.25, 0.75))
    method, path, body = seen[-1]
    assert body == {"signature_name": "serving_default",
                    "inputs": {"image_bytes": [{"b64": "anBlZw=="}]}}


def test_rest_single_output_is_named_from_the_metadata(fake_rest):
    """A one-output response is bare ({"outputs": [[3.0]]}); the alias comes from metadata."""
    outputs = Client(fake_rest[0], "half").predict_raw("serving_default", {"x": [[2.0]]})
    assert list(outputs) == ["y"] and outputs["y"].tolist() == [[3.0]]


def test_rest_classify_reads_results(fake_rest):
    assert Client(fake_rest[0], "catdog").classify([b"jpeg"]) == [{"cats": 0.25, "dogs": 0.75}]


def test_rest_metadata_reads_the_recorded_layout(fake_rest):
    metadata = Client(fake_rest[0], "half").metadata()
    assert metadata["serving_default"]["inputs"] == {"x": {"dtype": "float32", "shape": [-1, 1]}}
    assert metadata["classify_x_to_y"]["method"] == "tensorflow/serving/classify"
    assert metadata["classify_x_to_y"]["inputs"]["inputs"] == {"dtype": "string", "shape": None}
    catdog = Client(fake_rest[0], "catdog").metadata()
    assert catdog["__saved_model_init_op"]["outputs"]["__saved_model_init_op"]["dtype"] == \
        "invalid"


def test_rest_status_and_errors(fake_rest):
    assert Client(fake_rest[0], "catdog").status() == [
        {"version": 3, "state": "AVAILABLE", "error_message": ""}]
    with pytest.raises(ServingError) as error:
        Client(fake_rest[0], "nope").predict([b"jpeg"])
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    assert error.value.message == "Servable not found for request: Latest(nope)"


class _TypedFieldsServer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Answers as TF Serving does: outputs in float_val / int64_val / string_val."""

    def Predict(self, request, context):
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.signature_name = "serving_default"
        response.model_spec.version.value = 3
        probabilities = response.outputs["probabilities"]
        probabilities.dtype = types_pb2.DT_FLOAT
        probabilities.tensor_shape.dim.add(size=1)
        probabilities.tensor_shape.dim.add(size=2)
        probabilities.float_val.extend([0.875, 0.125])
        class_ids = response.outputs["class_ids"]
        class_ids.dtype = types_pb2.DT_INT64
        class_ids.tensor_shape.dim.add(size=1)
        class_ids.int64_val.append(0)
        classes = response.outputs["classes"]
        classes.dtype = types_pb2.DT_STRING
        classes.tensor_shape.dim.add(size=1)
        classes.string_val.append(b"cats")
        return response

    def Classify(self, request, context):
        response = classification_pb2.ClassificationResponse()
        item = response.result.classifications.add()
        item.classes.add(label="cats", score=0.875)
        item.classes.add(label="dogs", score=0.125)
        return response

    def GetModelMetadata(self, request, context):
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        json_format.ParseDict({"name": "catdog", "version": "3"}, response.model_spec)
        response.metadata["signature_def"].Pack(json_format.ParseDict(
            CATDOG_SIGNATURES, get_model_metadata_pb2.SignatureDefMap()))
        return response


@pytest.fixture(scope="module")
def fake_grpc():
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_TypedFieldsServer(),
                                                                        server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"grpc://127.0.0.1:{port}"
    server.stop(None)


def test_grpc_client_reads_typed_fields(fake_grpc):
    client = Client(fake_grpc, "catdog")
    (prediction,) = client.predict([b"jpeg"])
    assert (prediction.label, prediction.probabilities) == ("cats", (0.875, 0.125))
    assert client.classify([b"jpeg"]) == [{"cats": 0.875, "dogs": 0.125}]
    assert set(client.metadata()) == {"serving_default", "__saved_model_init_op"}

# --- when the server is away or silent ----------------------------------------------------------

@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_client_retries_unavailable_with_backoff_then_reports_it(scheme, monkeypatch):
    pauses = []
    monkeypatch.setattr("catdog.serving.client.time.sleep", pauses.append)
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


def test_the_command_labels_a_folder_as_predict_reads_it(fake_rest, tmp_path, capsys):
    from absl import flags

    from catdog.serving import client as client_lib
    from catdog.serving import options as options_lib

    folder = tmp_path / "photos"
    (folder / "b").mkdir(parents=True)
    for name in ("b/2.jpg", "1.PNG", "notes.txt", ".hidden.jpg"):
        (folder / name).write_bytes(b"jpeg")
    url, seen = fake_rest
    values = flags.FlagValues()
    options_lib.define_client_flags(values)
    values([
        "client", f"--server={url}", "--model=catdog"])
    original, flags.FLAGS = flags.FLAGS, values
    try:
        status = client_lib.main(["client", str(folder)])
    finally:
        flags.FLAGS = original
    out, err = capsys.readouterr()
    assert status == 0
    # Images in name order, recursively (hidden files count as images only if named so).
    assert [line.split("\t")[0] for line in out.splitlines()] == [
        str(folder / ".hidden.jpg"), str(folder / "1.PNG"), str(folder / "b" / "2.jpg")]
    assert "skipped 1 file(s)" in err and "notes.txt" in err


def test_the_client_is_importable_from_where_it_used_to_live():
    """User scripts written before the serving wing moved it: `from catdog.client import
    Client` (catdog/client.py re-exports the library names)."""
    from catdog import client as old_home
    from catdog.serving import client

    for name in ("Client", "Prediction", "GrpcTransport", "RestTransport"):
        assert getattr(old_home, name) is getattr(client, name)


def test_a_missing_model_gets_a_hint_beside_tf_servings_words():
    """The client command keeps TF Serving's NOT_FOUND message and adds what it leaves unsaid;
    other errors are left as they are."""
    from catdog.serving.client import _hint

    missing = ServingError(grpc.StatusCode.NOT_FOUND,
                           "Servable not found for request: Latest(catdog)")
    assert _hint(missing, "catdog").startswith(
        " (the server serves no model named 'catdog', or not that version: check the name it "
        "was started with, --model_name, whose TF Serving default is 'default'")
    assert _hint(ServingError(grpc.StatusCode.INVALID_ARGUMENT, "bad"), "catdog") == ""
