"""catdog.serving.rest: TF Serving's REST API, held to what TF Serving does.

- TF Serving's own tests replayed (tensorflow/serving, tensorflow_serving/...), each naming the
  test it ports: H model_servers/http_rest_api_handler_test.cc (REST routes, bodies, statuses),
  S model_servers/tensorflow_model_server_test.py (REST end to end), M
  servables/tensorflow/testdata/*_metadata.json (recorded metadata bodies), on TF Serving's test
  models (tests/tfserving_models.py). Expected values are TF Serving's, never produced by the code
  under test. Set CATDOG_TFSERVING_TESTDATA to a TF Serving checkout's
  servables/tensorflow/testdata to also compare metadata with the recorded files.
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
import pytest
import tensorflow as tf

from conftest import (
    CLASSES,
    TINY_PNG,
    assert_still_serving,
    free_ports,
    post,
    request_with,
)
from tfserving_models import TWO_VERSIONS, recorded_metadata, rest


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
    answer = rest(tfs_server, "POST", f"/v1/models/default:{verb}", json.dumps(body))
    assert answer == (200, expected)


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
def test_hostile_rest_requests_get_a_json_error_and_the_server_lives(serve_process, method, path,
                                                                      body, headers, status):
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


def _connections(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]


def test_idle_and_half_sent_connections_hold_no_request_slot_and_are_bounded(serve_process):
    """12 idle or half-sent connections with --max_rest_connections=8: a normal request is
    still answered (they hold no request slot); past 8 × 8 open connections one more is
    answered 503 at once; closing them frees the server."""
    idle = _connections(serve_process[2], 12)
    try:
        idle[0].sendall(b"POST /v1/models/catdog:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        assert rest_call(serve_process, "GET", "/v1/models/catdog")[0] == 200
        idle += _connections(serve_process[2], 64 - 12)
        code, document = rest_call(serve_process, "GET", "/v1/models/catdog")
        assert code == 503 and "--max_rest_connections" in document["error"]
    finally:
        for connection in idle:
            connection.close()
    deadline = time.monotonic() + 30
    while rest_call(serve_process, "GET", "/v1/models/catdog")[0] == 503:  # threads ending
        assert time.monotonic() < deadline
    assert_still_serving(serve_process)


@pytest.mark.slow
@pytest.mark.parametrize("slow_sockets", [64, 256])
def test_slow_senders_cannot_shut_rest_out(exported, slow_sockets):
    """Slowloris: sockets that send a request one byte at a time, against the default
    --max_rest_connections=64. Normal REST clients meanwhile fail no request, and every slow
    socket is disconnected once --rest_request_timeout_seconds has passed."""
    grpc_port, rest_port = free_ports(2)
    process = subprocess.Popen(
        [sys.executable, "-m", "catdog.serve", "--model_name=catdog",
         f"--model_base_path={exported[2]}", f"--port={grpc_port}",
         f"--rest_api_port={rest_port}", "--rest_request_timeout_seconds=3"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    slow = []
    try:
        assert process.stdout.readline().startswith("serving catdog")
        slow = _connections(rest_port, slow_sockets)
        request = b"POST /v1/models/catdog:predict HTTP/1.1\r\nContent-Length: 10\r\n\r\n"
        closed, failures, answered = set(), [], 0
        started = time.monotonic()
        for byte in range(len(request)):
            for index, connection in enumerate(slow):
                if index in closed:
                    continue
                try:
                    connection.sendall(request[byte:byte + 1])
                except OSError:
                    closed.add(index)
            code, _ = rest_call((process, grpc_port, rest_port), "GET", "/v1/models/catdog")
            answered += code == 200
            if code != 200:
                failures.append(code)
            if time.monotonic() - started > 8:
                break
            time.sleep(0.1)  # the slow senders' pace, not a measurement
        assert not failures and answered > 0
        for index, connection in enumerate(slow):  # the deadline has passed: all are closed
            connection.settimeout(10)
            try:
                assert connection.recv(1) == b"", index
            except ConnectionResetError:
                pass
    finally:
        for connection in slow:
            connection.close()
        process.terminate()
        process.wait(timeout=30)


def test_the_memory_budget_refuses_what_would_pass_it_and_frees_what_was_held():
    from catdog.serving.rest import MemoryBudget
    from catdog.serving.status import ServingError

    budget = MemoryBudget(10 << 20)
    with budget.reserve(6 << 20, "a body"):
        with pytest.raises(ServingError) as refused:
            with budget.reserve(5 << 20, "parsing this body"):
                pass
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.message.startswith(
            "parsing this body would need about 5 MiB, and 4 MiB of the server's 10 MiB for "
            "requests in flight (--rest_memory_budget_bytes) are free")
    with budget.reserve(10 << 20, "a body"):  # all of it again, once released
        pass


def test_a_bodys_parse_is_costed_by_its_values_before_parsing():
    from catdog.serving.rest import PARSED_BYTES_PER_VALUE, parse_cost

    assert parse_cost(b'{"instances": [[[1, 2, 3], [4, 5, 6]]]}') == 6 * PARSED_BYTES_PER_VALUE
    assert parse_cost(b'{"instances": [{"b64": "AAAA"}]}') == PARSED_BYTES_PER_VALUE


@pytest.fixture(scope="module")
def small_budget_server(exported):
    """A server whose REST requests may hold 8 MiB in all, bodies up to 4 MiB."""
    from catdog.serving.server import start_server

    server = start_server("catdog", exported[2], port=0, rest_api_port=0,
                          max_request_bytes=4 << 20, rest_memory_budget_bytes=8 << 20)
    yield server
    server.stop()


def _post_all(port: int, body: bytes) -> tuple[int, dict, float]:
    """(HTTP status, JSON body, seconds) of a POST sent whole before its reply is read, as
    urllib and most clients send."""
    start = time.monotonic()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/catdog:predict", body)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read()), time.monotonic() - start
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), time.monotonic() - start


def test_a_body_whose_parse_would_pass_the_budget_is_429_before_parsing(small_budget_server,
                                                                       jpegs):
    """A 3.9 MB predict_pixels body of 280,000 pixels would take ~100 MB parsed: refused at once
    (four at once too), each sender reading a 429, and the server answers the next request."""
    pixels = b"[" + b",".join([b"[255,255,255]"] * 280_000) + b"]"
    body = b'{"signature_name": "predict_pixels", "instances": [' + pixels + b"]}"
    assert len(body) < 4 << 20
    port = small_budget_server.rest_port
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _post_all(port, body), range(4)))
    for status, document, seconds in answers:
        assert status == 429 and "--rest_memory_budget_bytes" in document["error"]
        assert seconds < 5  # parsing it would take longer, and the memory
    b64 = base64.b64encode(jpegs[0].read_bytes()).decode()
    status, document, _ = _post_all(port, json.dumps({"instances": [{"b64": b64}]}).encode())
    assert status == 200 and len(document["predictions"]) == 1


def test_a_body_over_the_size_limit_gets_a_readable_429_not_a_broken_pipe(small_budget_server):
    status, document, _ = _post_all(small_budget_server.rest_port, b" " * ((4 << 20) + 1))
    assert status == 429
    assert document["error"] == (f"request body of {(4 << 20) + 1} bytes exceeds the limit of "
                                 f"{4 << 20} bytes")


@pytest.mark.parametrize("sent", [
    b"POST /v1/models/catdog:predict HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000,
    b"GET /v1/models/catdog HTTP/1.1\r\n\r\n"], ids=["mid-body", "before the reply"])
def test_a_client_reset_is_one_log_line_not_a_traceback(local_server, caplog, capfd, sent):
    import struct

    caplog.set_level("INFO", logger="absl")
    with socket.create_connection(("127.0.0.1", local_server.rest_port)) as connection:
        connection.sendall(sent)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + 30  # the handler thread logs once it notices the reset
    while not [r for r in caplog.records if "went away" in r.getMessage()]:
        assert time.monotonic() < deadline, "the reset was never logged"
        time.sleep(0.05)
    (line,) = [r.getMessage() for r in caplog.records if "went away" in r.getMessage()]
    assert line == "REST client 127.0.0.1 went away: Connection reset by peer"
    assert not [r for r in caplog.records if r.exc_info]
    assert "Traceback" not in capfd.readouterr().err


def test_metrics_asked_of_a_server_without_them_get_tf_servings_404_and_a_logged_hint(
        local_server, caplog):
    caplog.set_level("WARNING", logger="absl")
    status, body = post(local_server, "/monitoring/prometheus/metrics", b"")
    assert status == 404
    assert body == {"error": "No handler for /monitoring/prometheus/metrics"}
    assert [r.getMessage() for r in caplog.records if "asked for metrics" in r.getMessage()] == [
        "/monitoring/prometheus/metrics asked for metrics: this server exports them only with "
        "--monitoring_config_file (serving/monitoring.config)"]
