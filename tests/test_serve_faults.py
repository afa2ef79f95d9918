"""No request takes `catdog.serve` down: hostile gRPC and REST requests, a bounded seeded fuzz,
idle connections, and version swaps under load.

The server runs as its own process (`python -m catdog.serve`), so a crash shows as a dead process.
After every hostile request the same process must still answer a good one, and no answer may be
UNKNOWN (TF Serving answers these with INVALID_ARGUMENT or RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import random
import socket
import subprocess
import sys
import threading
import time

import grpc
import keras
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from catdog import export
from catdog import model as model_lib
from catdog.client import Client
from catdog.wire import ServingError
from conftest import free_ports

CLASS_NAMES = ("cats", "dogs")
TINY_PNG = tf.io.encode_png(tf.zeros([1, 1, 3], tf.uint8)).numpy()


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = model_lib.build_classifier(len(CLASS_NAMES), 32, "none")
    root = tmp_path_factory.mktemp("faults")
    return export.export_all(model, CLASS_NAMES, root, "catdog").saved_model.parent


@pytest.fixture(scope="module")
def server(model_base):
    grpc_port, rest_port = free_ports(2)
    process = subprocess.Popen(
        [sys.executable, "-m", "catdog.serve", f"--model_base_path={model_base}",
         f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--max_request_bytes=4194304",
         "--max_request_instances=64", "--max_rest_connections=8"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout.readline().startswith("serving catdog")
    yield process, grpc_port, rest_port
    process.terminate()
    process.wait(timeout=30)


def assert_still_serving(server):
    process, grpc_port, rest_port = server
    assert process.poll() is None, "the server process died"
    for url in (f"grpc://127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"):
        client = Client(url, timeout=30)
        assert client.predict([TINY_PNG])[0].label in CLASS_NAMES
        client.close()


def grpc_predict(server, request: predict_pb2.PredictRequest) -> grpc.StatusCode:
    channel = grpc.insecure_channel(f"127.0.0.1:{server[1]}")
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
def test_hostile_grpc_requests_get_a_status_and_the_server_lives(server, signature, alias, proto,
                                                                  code):
    assert grpc_predict(server, request_with(signature, alias, proto)) == code
    assert_still_serving(server)


def rest_call(server, method: str, path: str, body: bytes = b"", headers=None):
    """(status, JSON body) of a raw HTTP request, with exactly the headers given."""
    with socket.create_connection(("127.0.0.1", server[2]), timeout=60) as connection:
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
def test_hostile_rest_requests_get_a_json_error_and_the_server_lives(server, method, path, body,
                                                                      headers, status):
    code, document = rest_call(server, method, path, body, headers)
    assert code == status and isinstance(document["error"], str)
    assert_still_serving(server)


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


def test_seeded_fuzz_never_kills_the_server_or_answers_unknown(server):
    """200 random REST bodies and 200 byte-mutated gRPC requests (seed 0)."""
    rng = random.Random(0)
    for _ in range(200):
        verb = rng.choice(["predict", "classify", "regress"])
        code, document = rest_call(server, "POST", f"/v1/models/catdog:{verb}",
                                   json.dumps(_random_json(rng)).encode())
        assert code != 500 or "UNKNOWN" not in document["error"]
        assert code in (200, 400, 404, 429, 501), (code, document)
    valid = request_with("serving_default", "image_bytes",
                         tf.make_tensor_proto([TINY_PNG])).SerializeToString()
    channel = grpc.insecure_channel(f"127.0.0.1:{server[1]}")
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
    assert_still_serving(server)


def test_idle_connections_are_bounded_and_the_server_goes_on(server):
    """More idle connections than --max_rest_connections: the extra ones get 503 at once."""
    idle = [socket.create_connection(("127.0.0.1", server[2])) for _ in range(12)]
    try:
        idle[0].sendall(b"POST /v1/models/catdog:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        code, document = rest_call(server, "GET", "/v1/models/catdog")
        assert code == 503 and "--max_rest_connections" in document["error"]
    finally:
        for connection in idle:
            connection.close()
    deadline = time.monotonic() + 30
    while rest_call(server, "GET", "/v1/models/catdog")[0] == 503:  # slots free as threads end
        assert time.monotonic() < deadline
    assert_still_serving(server)


# --- the version lifecycle ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_model():
    keras.utils.set_random_seed(1)
    return model_lib.build_classifier(len(CLASS_NAMES), 32, "none")


def _served_versions(server) -> list[int]:
    return sorted(server.core.manager("catdog").loaded_versions())


def test_a_half_copied_version_is_served_once_complete(small_model, tmp_path):
    import shutil

    from catdog import serve

    base = tmp_path / "catdog"
    first = export.export_saved_model(small_model, CLASS_NAMES, base)
    server = serve.start_server("catdog", base, port=0, rest_api_port=None,
                                file_system_poll_wait_seconds=3600)
    try:
        partial = base / "2"
        shutil.copytree(first / "variables", partial / "variables")  # saved_model.pb not yet
        server.core.refresh()
        assert _served_versions(server) == [1]
        shutil.copy(first / "saved_model.pb", partial / "saved_model.pb")
        shutil.copytree(first / "assets", partial / "assets")
        shutil.copytree(first / "assets.extra", partial / "assets.extra")
        server.core.refresh()  # TF Serving retries a failed load on later polls
        assert _served_versions(server) == [2]
        shutil.rmtree(partial)  # the newest disappears: the newest that remains is served
        server.core.refresh()
        assert _served_versions(server) == [1]
    finally:
        server.stop()


@pytest.mark.slow
def test_version_swaps_under_load_fail_no_request(small_model, tmp_path):
    """6 clients (gRPC and REST) while two new versions replace the served one
    (--keep_versions=1 deletes the old folder): zero failed requests."""
    from catdog import serve

    base = tmp_path / "catdog"
    export.export_saved_model(small_model, CLASS_NAMES, base)
    server = serve.start_server("catdog", base, port=0, rest_api_port=0,
                                file_system_poll_wait_seconds=0.2)
    stop, failures, counts = threading.Event(), [], []

    def client_loop(url):
        client, done = Client(url, timeout=60, retries=0), 0
        while not stop.is_set():
            try:
                client.predict([TINY_PNG])
                done += 1
            except ServingError as error:
                failures.append(error)
        counts.append(done)

    urls = [f"grpc://127.0.0.1:{server.grpc_port}", f"http://127.0.0.1:{server.rest_port}"] * 3
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
        for url in urls:
            pool.submit(client_loop, url)
        try:
            for version in (2, 3):
                export.export_saved_model(small_model, CLASS_NAMES, base, keep_versions=1)
                deadline = time.monotonic() + 60
                while _served_versions(server) != [version]:
                    assert time.monotonic() < deadline, _served_versions(server)
                    time.sleep(0.05)
        finally:
            stop.set()
    server.stop()
    assert not failures, failures[:3]
    assert sum(counts) > 0


def test_a_retired_version_runs_the_requests_that_found_it(small_model, tmp_path):
    """A request holding version 1 when version 2 replaces it still runs on version 1; the old
    version is closed only after that request ends."""
    import numpy as np
    from tensorflow_serving.apis import model_pb2

    from catdog import serve

    base = tmp_path / "catdog"
    export.export_saved_model(small_model, CLASS_NAMES, base)
    server = serve.start_server("catdog", base, port=0, rest_api_port=None,
                                file_system_poll_wait_seconds=3600)
    try:
        with server.core.use(model_pb2.ModelSpec(name="catdog")) as old:
            export.export_saved_model(small_model, CLASS_NAMES, base, keep_versions=1)
            server.core.refresh()
            assert _served_versions(server) == [2] and old.version == 1
            outputs = old.predict("serving_default",
                                  {"image_bytes": np.array([TINY_PNG], object)})
            assert outputs["probabilities"].shape == (1, 2)
    finally:
        server.stop()
