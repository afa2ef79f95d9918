"""TF Serving's REST API (model_servers/http_rest_api_handler.cc): a thin transport over `api`.

Paths, verbs and JSON are TF Serving's; the HTTP server is the standard library's, one thread per
connection, at most --max_rest_connections at once.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http import server as http_server

import grpc
from absl import logging
from google.protobuf import json_format, message
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    regression_pb2,
)

from catdog.serving import api, json_tensor
from catdog.serving.api import Api
from catdog.serving.status import ServingError, http_status, invalid

# model_servers/http_rest_api_util.cc
_PREDICTION_PATH = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                              r":(classify|regress|predict)", re.IGNORECASE)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|"
                          r"(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE)
_INT64_MAX = (1 << 63) - 1


def _spec_from_path(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    """ParseModelInfo + FillModelSpecWithNameVersionAndLabel."""
    spec = model_pb2.ModelSpec(name=urllib.parse.unquote(name or ""))
    if version:
        if int(version) > _INT64_MAX:
            raise invalid(f"Failed to convert version: {version} to numeric.")
        spec.version.value = int(version)
    if label:
        spec.version_label = urllib.parse.unquote(label)
    return spec


def _proto_json(message_: message.Message, preserve_names: bool) -> dict:
    return json_format.MessageToDict(message_, preserving_proto_field_name=preserve_names,
                                      always_print_fields_with_no_presence=True)


def rest_request(server_api: Api, http_method: str, path: str, body: bytes) -> tuple[str, str]:
    """HttpRestApiHandler::ProcessRequest: (API name for metrics, JSON text), or ServingError."""
    malformed = invalid(f"Malformed request: {http_method} {path}")
    if http_method == "POST":
        match = _PREDICTION_PATH.fullmatch(path)
        if not match:
            raise malformed
        spec = _spec_from_path(*match.groups()[:3])
        verb = match[4].lower()
        return verb, server_api.call(lambda: _rest_post(server_api, spec, verb, body),
                                     spec.name, verb, "REST")
    if http_method == "GET":
        match = _STATUS_PATH.fullmatch(path)
        if not match:
            raise malformed
        spec = _spec_from_path(*match.groups()[:3])
        if not spec.name:
            raise invalid("Missing model name in request.")
        if match[4]:
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=spec, metadata_field=["signature_def"])
            response = api.metadata(server_api.core, request)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signature_map)
            return "metadata", json_tensor.dumps({
                "model_spec": _proto_json(response.model_spec, True),
                "metadata": {"signature_def": _proto_json(signature_map, True)}})
        response = api.model_status(server_api.core, get_model_status_pb2.GetModelStatusRequest(
            model_spec=spec))
        return "status", json_tensor.dumps(_proto_json(response, False))
    raise malformed


def _rest_post(server_api: Api, spec: model_pb2.ModelSpec, verb: str, body: bytes) -> str:
    document = json_tensor.parse_json(body)
    spec.signature_name = json_tensor.signature_name_of(document)
    if verb == "predict":
        _, outputs = api.run_predict(
            server_api.core, spec, lambda servable: json_tensor.predict_inputs_from_json(
                document, servable.input_dtypes(spec.signature_name))[0], server_api.options)
        return json_tensor.json_from_outputs(outputs, row="instances" in document)
    request_input = json_tensor.input_from_json(document)
    if verb == "classify":
        response = api.classify(server_api.core, classification_pb2.ClassificationRequest(
            model_spec=spec, input=request_input), server_api.options)
        return json_tensor.json_from_classification_result(response.result)
    response = api.regress(server_api.core, regression_pb2.RegressionRequest(
        model_spec=spec, input=request_input), server_api.options)
    return json_tensor.json_from_regression_result(response.result)


# Peak bytes one JSON value costs between parsing a REST body and its request tensor (a Python
# float in a list, then a TensorProto field): 118-120 bytes per comma-separated value, measured
# on predict_pixels bodies of 4-63 MB (benchmarks/README.md); each value but the last ends in a
# comma, so counting commas bounds a body's cost before it is parsed.
PARSED_BYTES_PER_VALUE = 120
_DISCARD_CHUNK = 1 << 16


class MemoryBudget:
    """Bytes shared by the REST requests in flight: each reserves its body before reading it
    and its parse before parsing it, and one that would pass the budget is refused at once
    (RESOURCE_EXHAUSTED, HTTP 429) rather than waiting or taking the memory."""

    def __init__(self, total: int):
        self.total, self._used = total, 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def reserve(self, size: int, what: str) -> Iterator[None]:
        with self._lock:
            if self._used + size > self.total:
                free = (self.total - self._used) >> 20
                raise ServingError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{what} would need about {size >> 20} MiB, and {free} MiB of the "
                    f"server's {self.total >> 20} MiB for requests in flight "
                    "(--rest_memory_budget_bytes) are free; send fewer or smaller requests "
                    "(images as {\"b64\": ...} bytes cost least)")
            self._used += size
        try:
            yield
        finally:
            with self._lock:
                self._used -= size


def parse_cost(body: bytes) -> int:
    """The bytes parsing `body` into request tensors will take at most, from its values (a
    count in C, ~20 ms for 64 MB)."""
    return PARSED_BYTES_PER_VALUE * (body.count(b",") + 1)


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, all bounded by one deadline: a request must arrive whole (headers,
    then body) by then, however slowly its bytes trickle in."""

    def __init__(self, connection: socket.socket):
        self.connection, self.deadline = connection, math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive within --rest_request_timeout_seconds")
        self.connection.settimeout(remaining)
        return self.connection.recv_into(buffer)


class RestHandler(http_server.BaseHTTPRequestHandler):
    """TF Serving's REST API (and its Prometheus page) over the same functions as gRPC. Each
    request must arrive whole within `request_timeout` seconds of the connection being ready
    for it; it then needs one of the server's request slots (--max_rest_connections)."""

    api: Api
    monitoring_path: str | None = None
    protocol_version = "HTTP/1.1"
    request_timeout = 30.0
    timeout = 30  # seconds a reply may take to be written

    def setup(self):
        super().setup()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self):
        """One request, read under its deadline (a timeout closes the connection)."""
        self._reader.deadline = time.monotonic() + self.request_timeout
        super().handle_one_request()

    def do_GET(self):
        if self.monitoring_path and self.path.split("?")[0] == self.monitoring_path:
            self._read_body()
            self._reply(200, self.api.metrics.page(), "text/plain")
            return
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_OPTIONS(self):
        """A CORS preflight: TF Serving answers OK when an http(s) Origin is given."""
        self._read_body()
        if re.search(r"https?://", self.headers.get("Origin", "")):
            self._reply(200, "")
        else:
            self._reply_error(ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                           "Origin header is missing in CORS preflight"))

    def log_message(self, format, *args):
        logging.debug("%s %s", self.address_string(), format % args)

    def _handle(self, http_method: str) -> None:
        try:
            with contextlib.ExitStack() as reserved:  # held until the reply is written
                body = self._read_body(reserved)
                path = self.path.split("?")[0]
                if not re.fullmatch(r"/v1/.*", path, re.IGNORECASE):
                    if "metrics" in path and not self.monitoring_path and \
                            not self.server.told_about_metrics:  # once: a hint, not a flood
                        self.server.told_about_metrics = True
                        logging.warning("%s asked for metrics: this server exports them only "
                                        "with --monitoring_config_file (serving/"
                                        "monitoring.config)", path)
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"No handler for {path}")
                reserved.enter_context(self.server.memory.reserve(
                    parse_cost(body), f"parsing this {len(body)}-byte body"))
                with self.server.request_slot():
                    _, output = rest_request(self.api, http_method, path, body)
                self._reply(200, output)
        except ServingError as error:
            self._reply_error(error)
        except TimeoutError:  # the body came too slowly: handle_one_request drops the connection
            raise
        except ConnectionError as error:  # the client went away: nobody to answer
            self.close_connection = True
            _log_gone(self.client_address, error)
        except Exception as error:  # the server answers every request and keeps serving
            logging.exception("internal error in REST %s %s", http_method, self.path)
            self._reply_error(ServingError(grpc.StatusCode.INTERNAL,
                                           f"{type(error).__name__}: {error}"))

    def _read_body(self, reserved: contextlib.ExitStack | None = None) -> bytes:
        """The body, its bytes reserved in `reserved` first (kept until that stack closes). A
        body refused unread is read and dropped in chunks, so its sender reads the refusal
        rather than a broken pipe."""
        header = self.headers.get("Content-Length") or "0"
        if not header.isdigit():
            self.close_connection = True
            raise invalid(f"Content-Length: {header!r} is not a non-negative integer")
        length = int(header)
        try:
            if length > self.api.options.max_request_bytes:
                raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"request body of {length} bytes exceeds the limit of "
                                   f"{self.api.options.max_request_bytes} bytes")
            if reserved is not None:
                reserved.enter_context(self.server.memory.reserve(
                    length, f"a {length}-byte body"))
        except ServingError:
            self._discard(length)
            raise
        return self.rfile.read(length)

    def _discard(self, length: int) -> None:
        """Reads a refused body of up to twice --max_request_bytes into nothing (within the
        request's deadline), then closes the connection after the reply; a longer one is not
        read at all."""
        self.close_connection = True
        if length > 2 * self.api.options.max_request_bytes:
            return
        with contextlib.suppress(OSError, TimeoutError):
            while length > 0:
                chunk = self.rfile.read(min(length, _DISCARD_CHUNK))
                if not chunk:
                    break
                length -= len(chunk)

    def _reply_error(self, error: ServingError) -> None:
        self._reply(http_status(error.code), json_tensor.json_error(error.message))

    def _reply(self, status: int, text: str, content_type: str = "application/json") -> None:
        payload = text.encode()
        self.connection.settimeout(self.timeout)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class RestServer(http_server.ThreadingHTTPServer):
    """A thread per connection. Requests are processed `max_requests` at once, and a request
    past that is answered 503 (UNAVAILABLE, which clients retry); together they hold at most
    `memory_budget` bytes of bodies and parses (`MemoryBudget`), a request past that 429.
    Connections that are still sending, or idle between requests, hold no request slot, so
    slow senders cannot shut others out; at most CONNECTIONS_PER_REQUEST_SLOT × `max_requests`
    connections are open at once, and one past that is answered 503 and closed at once."""

    daemon_threads = True
    request_queue_size = 128  # connections the kernel holds while the accept loop catches up
    CONNECTIONS_PER_REQUEST_SLOT = 8

    def __init__(self, address, handler, max_requests: int, memory_budget: int = 1 << 30):
        super().__init__(address, handler)
        self.memory = MemoryBudget(memory_budget)
        self.told_about_metrics = False
        self.max_requests = max_requests
        self.max_connections = max_requests * self.CONNECTIONS_PER_REQUEST_SLOT
        self._requests = threading.BoundedSemaphore(max_requests)
        self._connections = threading.BoundedSemaphore(self.max_connections)

    @contextlib.contextmanager
    def request_slot(self):
        """Holds one of the `max_requests` slots while a request runs, or raises UNAVAILABLE."""
        if not self._requests.acquire(blocking=False):
            raise ServingError(grpc.StatusCode.UNAVAILABLE,
                               f"the server is processing {self.max_requests} requests "
                               "(--max_rest_connections); retry later")
        try:
            yield
        finally:
            self._requests.release()

    def process_request(self, request, client_address):
        if not self._connections.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._connections.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def handle_error(self, request, client_address) -> None:
        """A connection the client reset or closed mid-reply is one log line; anything else
        keeps socketserver's traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            _log_gone(client_address, error)
            return
        super().handle_error(request, client_address)

    def _refuse(self, request) -> None:
        body = json_tensor.json_error(
            f"the server holds {self.max_connections} connections (8 × "
            "--max_rest_connections); retry later").encode()
        try:
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json"
                            b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                            % (len(body), body))
        except OSError:
            pass
        self.shutdown_request(request)


def _log_gone(client_address, error: ConnectionError) -> None:
    logging.info("REST client %s went away: %s", client_address[0],
                 error.strerror or type(error).__name__)

