"""A local stand-in for TensorFlow Serving, for laptops and CI where the real one cannot run.

    python -m catdog.serve --model_base_path=export/catdog [--model_name=catdog]
                           [--port=8500] [--rest_api_port=8501]

Production uses TF Serving itself (see serving/). This server implements the part of its API that
catdog's client uses, with TF Serving's formats, routes and status codes: gRPC
`PredictionService` Predict, Classify and GetModelMetadata and `ModelService` GetModelStatus; REST
status, metadata, `:predict`, `:classify` (and `:regress`, which no catdog signature supports).
Like TF Serving's C++ loader it loads each version from the SavedModel's MetaGraphDef into a graph
and session and runs signatures by tensor name, so a model that serves here serves there. It
serves the newest integer version under the base path, picks up new ones as they appear, replays
the version's warm-up requests before serving it, binds 127.0.0.1 unless told otherwise, and
refuses requests larger than --max_request_bytes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import re
import threading
from collections.abc import Mapping, Sequence
from http import server as http_server
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import json_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc,
                                     status_pb2)

from catdog import flags as catdog_flags
from catdog import signatures, wire
from catdog.errors import CatdogError
from catdog.wire import ServingError

REGRESS_METHOD = "tensorflow/serving/regress"
_REST_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>classify|regress|predict))?$", re.IGNORECASE)


# --- one loaded version ------------------------------------------------------------------------

class Servable:
    """One SavedModel version in its own graph and session, run through its signature defs."""

    def __init__(self, name: str, version: int, path: Path):
        self.name, self.version, self.path = name, version, path
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(path))
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = {
            key: sig for key, sig in meta_graph.signature_def.items() if not key.startswith("__")}

    def signature(self, name: str, method: str | None = None) -> meta_graph_pb2.SignatureDef:
        key = name or signatures.SERVING_DEFAULT
        if key not in self.signature_defs:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Serving signature key \"{key}\" not found.")
        signature = self.signature_defs[key]
        if method and signature.method_name != method:
            raise wire.invalid(f"Expected {method.rsplit('/', 1)[-1]} signature method_name to be "
                               f"{method}. Was: {signature.method_name}")
        return signature

    def input_dtypes(self, signature_name: str) -> dict[str, tf.dtypes.DType]:
        return {k: tf.dtypes.as_dtype(v.dtype)
                for k, v in self.signature(signature_name).inputs.items()}

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray],
            output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Runs a signature on named arrays; bad names, dtypes or shapes are INVALID_ARGUMENT."""
        signature = self.signature(signature_name)
        expected = sorted(signature.inputs)
        if sorted(inputs) != expected:
            raise wire.invalid(f"input tensor alias mismatch: got {sorted(inputs)}, the "
                               f"signature expects {expected}")
        feed = {}
        for key, array in inputs.items():
            info = signature.inputs[key]
            feed[info.name] = _checked_input(key, array, info)
        wanted = list(output_filter) or sorted(signature.outputs)
        unknown = set(wanted) - set(signature.outputs)
        if unknown:
            raise wire.invalid(f"output tensor alias not found in signature: {sorted(unknown)[0]}")
        try:
            return self.session.run({k: signature.outputs[k].name for k in wanted}, feed)
        except tf.errors.OpError as error:
            raise ServingError.from_tf_error(error) from None

    def classify(self, signature_name: str, examples: Sequence[tf.train.Example]
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Classes and scores [N, C] of a classify-method signature for tf.Examples."""
        signature = self.signature(signature_name, signatures.CLASSIFY_METHOD)
        (input_key,) = signature.inputs
        serialized = np.array([e.SerializeToString() for e in examples], dtype=object)
        outputs = self.run(signature_name, {input_key: serialized})
        return outputs["classes"], outputs["scores"]

    def warm_up(self) -> int:
        """Replays assets.extra/tf_serving_warmup_requests as TF Serving does; returns the count."""
        path = self.path / signatures.WARMUP_FILE
        if not path.exists():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(path)):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.HasField("predict_log"):
                request = log.predict_log.request
                self.run(request.model_spec.signature_name,
                         {k: wire.from_tensor_proto(v) for k, v in request.inputs.items()})
            elif log.HasField("classify_log"):
                request = log.classify_log.request
                self.classify(request.model_spec.signature_name,
                              request.input.example_list.examples)
            count += 1
        return count

    def close(self) -> None:
        self.session.close()


def _checked_input(key: str, array: np.ndarray, info: meta_graph_pb2.TensorInfo) -> np.ndarray:
    dtype = tf.dtypes.as_dtype(info.dtype)
    actual = tf.dtypes.as_dtype(array.dtype) if array.dtype != object else tf.string
    if actual != dtype:
        raise wire.invalid(f"input '{key}' must be {dtype.name}, not {actual.name}")
    if not info.tensor_shape.unknown_rank:
        shape = [d.size for d in info.tensor_shape.dim]
        if len(array.shape) != len(shape) or any(
                want not in (-1, got) for want, got in zip(shape, array.shape)):
            raise wire.invalid(f"input '{key}' has shape {list(array.shape)}; the signature "
                               f"expects {shape} (-1: any size)")
    return array


# --- versions of one model ---------------------------------------------------------------------

class ModelManager:
    """Keeps the newest version under a base path loaded, as TF Serving's `latest` policy does."""

    def __init__(self, name: str, base_path: str | Path):
        self.name = name
        self.base_path = Path(base_path)
        self._lock = threading.Lock()
        self._current: Servable | None = None
        self._failed: set[int] = set()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def refresh(self) -> Servable | None:
        """Loads the newest version if it is newer than the one served; returns what is served."""
        versions = sorted((int(p.name) for p in self.base_path.iterdir() if p.name.isdigit()),
                          reverse=True) if self.base_path.is_dir() else []
        current = self._current
        for version in versions:
            if current and version <= current.version:
                break
            if version in self._failed:
                continue
            try:
                servable = Servable(self.name, version, self.base_path / str(version))
                logging.info("warmed up %s version %d with %d requests", self.name, version,
                             servable.warm_up())
            except Exception as error:  # a broken version must not stop the server
                logging.error("could not load %s version %d: %s", self.name, version, error)
                self._failed.add(version)
                continue
            with self._lock:
                old, self._current = self._current, servable
            if old:
                old.close()
            logging.info("serving %s version %d from %s", self.name, version, servable.path)
            break
        return self._current

    def start_polling(self, seconds: float) -> None:
        def poll():
            while not self._stop.wait(seconds):
                self.refresh()

        self._poller = threading.Thread(target=poll, name="version-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller:
            self._poller.join()
        if self._current:
            self._current.close()

    def servable(self, spec: model_pb2.ModelSpec) -> Servable:
        """The servable a request's model spec names, or NOT_FOUND as TF Serving words it."""
        current = self._current
        version = spec.version.value if spec.HasField("version") else None
        if spec.name != self.name or current is None:
            request = f"Specific({spec.name}, {version})" if version else f"Latest({spec.name})"
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: {request}")
        if spec.version_label:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Unrecognized servable version label: {spec.version_label}")
        if version is not None and version != current.version:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({spec.name}, {version})")
        return current


# --- the API, once for both transports ----------------------------------------------------------

def predict(manager: ModelManager, request: predict_pb2.PredictRequest
            ) -> predict_pb2.PredictResponse:
    servable = manager.servable(request.model_spec)
    inputs = {k: wire.from_tensor_proto(v) for k, v in request.inputs.items()}
    outputs = servable.run(request.model_spec.signature_name, inputs, request.output_filter)
    response = predict_pb2.PredictResponse(model_spec=_spec_of(servable, request.model_spec))
    for key, array in outputs.items():
        response.outputs[key].CopyFrom(wire.to_tensor_proto(array))
    return response


def classify(manager: ModelManager, request: classification_pb2.ClassificationRequest
             ) -> classification_pb2.ClassificationResponse:
    servable = manager.servable(request.model_spec)
    if not request.input.HasField("example_list"):
        raise wire.invalid("classify takes input.example_list")
    classes, scores = servable.classify(request.model_spec.signature_name,
                                        request.input.example_list.examples)
    response = classification_pb2.ClassificationResponse(
        model_spec=_spec_of(servable, request.model_spec))
    for row_classes, row_scores in zip(classes, scores):
        response.result.classifications.add(classes=[
            classification_pb2.Class(label=c.decode(), score=float(s))
            for c, s in zip(row_classes, row_scores)])
    return response


def metadata(manager: ModelManager, request: get_model_metadata_pb2.GetModelMetadataRequest
             ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    servable = manager.servable(request.model_spec)
    unsupported = set(request.metadata_field) - {"signature_def"}
    if unsupported or not request.metadata_field:
        raise wire.invalid(f"Metadata field {sorted(unsupported or {''})[0]!r} is not "
                           "supported; the only field is 'signature_def'")
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=_spec_of(servable, request.model_spec))
    response.metadata["signature_def"].Pack(signature_map)
    return response


def model_status(manager: ModelManager, request: get_model_status_pb2.GetModelStatusRequest
                 ) -> get_model_status_pb2.GetModelStatusResponse:
    servable = manager.servable(request.model_spec)
    return get_model_status_pb2.GetModelStatusResponse(model_version_status=[
        get_model_status_pb2.ModelVersionStatus(
            version=servable.version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE,
            status=status_pb2.StatusProto(error_code=0, error_message=""))])


def _spec_of(servable: Servable, spec: model_pb2.ModelSpec) -> model_pb2.ModelSpec:
    result = model_pb2.ModelSpec(name=servable.name, signature_name=spec.signature_name)
    result.version.value = servable.version
    return result


# --- gRPC --------------------------------------------------------------------------------------

def _grpc_method(function):
    def method(self, request, context):
        try:
            return function(self.manager, request)
        except ServingError as error:
            context.abort(error.code, error.message)
    return method


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    Predict = _grpc_method(predict)
    Classify = _grpc_method(classify)
    GetModelMetadata = _grpc_method(metadata)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    GetModelStatus = _grpc_method(model_status)


# --- REST --------------------------------------------------------------------------------------

class RestHandler(http_server.BaseHTTPRequestHandler):
    """TF Serving's REST API over the same functions as gRPC."""

    manager: ModelManager
    max_request_bytes: int
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def log_message(self, format, *args):
        logging.debug("%s %s", self.address_string(), format % args)

    def _handle(self, http_method: str) -> None:
        try:
            body = self._read_body()
            self._reply(200, self._route(http_method, body))
        except ServingError as error:
            self._reply(wire.http_status(error.code), {"error": error.message})

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.max_request_bytes:
            self.close_connection = True
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"request body of {length} bytes exceeds the limit of "
                               f"{self.max_request_bytes} bytes")
        return self.rfile.read(length)

    def _route(self, http_method: str, body: bytes) -> dict:
        match = _REST_ROUTE.match(self.path)
        verb = match and match["verb"]
        if not match or (http_method == "POST") != bool(verb):
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Malformed request: {http_method} {self.path}")
        spec = model_pb2.ModelSpec(name=match["name"], version_label=match["label"] or "")
        if match["version"]:
            spec.version.value = int(match["version"])
        if http_method == "GET":
            if match["metadata"]:
                request = get_model_metadata_pb2.GetModelMetadataRequest(
                    model_spec=spec, metadata_field=["signature_def"])
                return _to_json(metadata(self.manager, request))
            return _to_json(model_status(self.manager, get_model_status_pb2.GetModelStatusRequest(
                model_spec=spec)))
        document = _parse_json(body)
        if isinstance(document, dict) and "signature_name" in document:
            spec.signature_name = str(document["signature_name"])
        servable = self.manager.servable(spec)
        if verb.lower() == "predict":
            inputs, row = wire.parse_predict_body(
                document, servable.input_dtypes(spec.signature_name))
            return wire.predict_response(servable.run(spec.signature_name, inputs), row)
        method = signatures.CLASSIFY_METHOD if verb.lower() == "classify" else REGRESS_METHOD
        servable.signature(spec.signature_name, method)
        classes, scores = servable.classify(spec.signature_name, wire.examples_from_json(document))
        return wire.classify_response(classes, scores)

    def _reply(self, status: int, document: dict) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _parse_json(body: bytes):
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise wire.invalid(f"JSON Parse error: {error}") from None


def _to_json(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                      always_print_fields_with_no_presence=True)


# --- the server --------------------------------------------------------------------------------

@dataclasses.dataclass
class LocalServer:
    """A running local server; `grpc_port` and `rest_port` are the bound ports."""

    manager: ModelManager
    grpc_server: grpc.Server
    rest_server: http_server.ThreadingHTTPServer | None
    grpc_port: int
    rest_port: int

    def stop(self) -> None:
        self.grpc_server.stop(grace=1).wait()
        if self.rest_server:
            self.rest_server.shutdown()
            self.rest_server.server_close()
        self.manager.stop()


def start_server(model_name: str, model_base_path: str | Path, *, host: str = "127.0.0.1",
                 port: int = 8500, rest_api_port: int = 8501, max_request_bytes: int = 64 << 20,
                 poll_seconds: float = 1.0, threads: int = 16) -> LocalServer:
    """Loads the newest version and starts gRPC (and REST unless its port is None); port 0
    picks a free port."""
    manager = ModelManager(model_name, model_base_path)
    if manager.refresh() is None:
        raise CatdogError(f"--model_base_path={model_base_path} holds no loadable version "
                          "(an integer-named folder with saved_model.pb)")
    options = [("grpc.max_receive_message_length", max_request_bytes),
               ("grpc.max_send_message_length", max_request_bytes)]
    grpc_server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=threads),
                              options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), grpc_server)
    grpc_port = grpc_server.add_insecure_port(f"{host}:{port}")
    if grpc_port == 0:
        raise CatdogError(f"--port={port}: cannot listen on {host}:{port}")
    grpc_server.start()
    rest_server, rest_port = None, 0
    if rest_api_port is not None:
        handler = type("Handler", (RestHandler,), {"manager": manager,
                                                   "max_request_bytes": max_request_bytes})
        try:
            rest_server = http_server.ThreadingHTTPServer((host, rest_api_port), handler)
        except OSError as error:
            grpc_server.stop(None)
            raise CatdogError(f"--rest_api_port={rest_api_port}: {error.strerror}") from error
        rest_server.daemon_threads = True
        rest_port = rest_server.server_address[1]
        threading.Thread(target=rest_server.serve_forever, name="rest", daemon=True).start()
    manager.start_polling(poll_seconds)
    return LocalServer(manager, grpc_server, rest_server, grpc_port, rest_port)


def main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise CatdogError(f"unexpected arguments {list(argv[1:])}")
    f = flags.FLAGS
    server = start_server(
        f.model_name, f.model_base_path, host=f.host, port=f.port,
        rest_api_port=f.rest_api_port or None, max_request_bytes=f.max_request_bytes,
        poll_seconds=f.file_system_poll_wait_seconds)
    print(f"serving {f.model_name} on gRPC {f.host}:{server.grpc_port}"
          + (f" and REST http://{f.host}:{server.rest_port}" if server.rest_server else ""),
          flush=True)
    try:
        server.grpc_server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    from catdog import cli

    cli.run(main, catdog_flags.define_serve_flags)
