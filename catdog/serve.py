"""A local stand-in for TensorFlow Serving, for laptops and CI where the real one cannot run.

    python -m catdog.serve --model_base_path=export/catdog [--model_name=catdog]
    python -m catdog.serve --model_config_file=serving/models.config
                           [--enable_batching --batching_parameters_file=serving/batching.config]
                           [--monitoring_config_file=serving/monitoring.config]

Production uses TF Serving itself (see serving/). This server speaks TF Serving's APIs as TF
Serving's own tests and recorded responses define them, under TF Serving's flag names: gRPC
`PredictionService` (Predict, Classify, Regress, MultiInference, GetModelMetadata) and
`ModelService` (GetModelStatus, HandleReloadConfigRequest); REST `/v1/models/...` status,
metadata, `:predict`, `:classify`, `:regress`, with `/versions/N` and `/labels/L`; Prometheus
metrics. What it does not do is listed in serving/README.md ("Differences from TF Serving").
It imports no training code: only the wire format, the contract names and the errors.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TypeVar
from http import server as http_server
from pathlib import Path

import grpc
from absl import logging
from google.protobuf import json_format, message
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     model_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2, status_pb2)

from catdog import contract, wire
from catdog.batching import BatchingOptions
from catdog.errors import CatdogError
from catdog.server_core import ServerCore, single_model_config
from catdog.serving_config import (BatchingParameters, ModelServerConfig, MonitoringConfig,
                                   parse_text_proto)
from catdog.serving_metrics import Metrics
from catdog.wire import ServingError

# model_servers/http_rest_api_util.cc
_PREDICTION_PATH = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                              r":(classify|regress|predict)", re.IGNORECASE)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|"
                          r"(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE)
_INT64_MAX = (1 << 63) - 1
T = TypeVar("T")


# --- the API, once for both transports ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Limits:
    """The work one request may ask for; past these a request is RESOURCE_EXHAUSTED."""

    max_request_bytes: int = 64 << 20  # message or body size, and any one decoded tensor
    max_request_instances: int = 256  # batch size (first dimension) or tf.Examples


def _check_instances(count: int, limits: Limits) -> None:
    if count > limits.max_request_instances:
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"request holds {count} instances; the limit is "
                           f"{limits.max_request_instances} (--max_request_instances)")


def _checked_arrays(tensors, limits: Limits) -> dict:
    """Request tensors as arrays, each checked against the byte and instance limits."""
    arrays = {k: wire.array_from_proto(v, limits.max_request_bytes) for k, v in tensors.items()}
    for array in arrays.values():
        _check_instances(array.shape[0] if array.ndim else 1, limits)
    return arrays


def _examples_in(request_input) -> int:
    kind = request_input.WhichOneof("kind")
    return len(getattr(request_input, kind).examples) if kind else 0

def _spec_of(servable, spec: model_pb2.ModelSpec, signature_name: str | None = None
             ) -> model_pb2.ModelSpec:
    """MakeModelSpec: the model name, the version served and the signature resolved."""
    result = model_pb2.ModelSpec(name=spec.name, signature_name=(
        signature_name if signature_name is not None else
        spec.signature_name or contract.SERVING_DEFAULT))
    result.version.value = servable.version
    return result


def _require_spec(request) -> None:
    if not request.HasField("model_spec"):
        raise wire.invalid("Missing ModelSpec")


def predict(core: ServerCore, request: predict_pb2.PredictRequest, limits: Limits = Limits()
            ) -> predict_pb2.PredictResponse:
    _require_spec(request)
    with core.use(request.model_spec) as servable:
        inputs = _checked_arrays(request.inputs, limits)
        outputs = servable.predict(request.model_spec.signature_name, inputs,
                                   request.output_filter)
    response = predict_pb2.PredictResponse(model_spec=_spec_of(servable, request.model_spec))
    for alias, array in outputs.items():
        response.outputs[alias].CopyFrom(wire.tensor_proto(array))
    return response


def _on_examples(core: ServerCore, request, limits: Limits, method: str, response_class):
    """Classify or Regress: the request's tf.Examples through `Servable.<method>`."""
    _require_spec(request)
    _check_instances(_examples_in(request.input), limits)
    with core.use(request.model_spec) as servable:
        result = getattr(servable, method)(request.model_spec.signature_name, request.input)
    return response_class(model_spec=_spec_of(servable, request.model_spec), result=result)


def classify(core: ServerCore, request: classification_pb2.ClassificationRequest,
             limits: Limits = Limits()) -> classification_pb2.ClassificationResponse:
    return _on_examples(core, request, limits, "classify",
                        classification_pb2.ClassificationResponse)


def regress(core: ServerCore, request: regression_pb2.RegressionRequest,
            limits: Limits = Limits()) -> regression_pb2.RegressionResponse:
    return _on_examples(core, request, limits, "regress", regression_pb2.RegressionResponse)


def multi_inference(core: ServerCore, request: inference_pb2.MultiInferenceRequest,
                    limits: Limits = Limits()) -> inference_pb2.MultiInferenceResponse:
    """Several classify/regress signatures of one model over the same examples."""
    _check_instances(_examples_in(request.input) * max(1, len(request.tasks)), limits)
    if not request.tasks:
        raise wire.invalid("Found no tasks in MultiInferenceRequest.")
    names, signatures = {t.model_spec.name for t in request.tasks}, set()
    if "" in names:
        raise wire.invalid("Found ModelSpec with an empty model name.")
    if len(names) > 1:
        raise wire.invalid("All ModelSpecs in a MultiInferenceRequest must access the same "
                           "model name.")
    response = inference_pb2.MultiInferenceResponse()
    with core.use(request.tasks[0].model_spec) as servable:
        for task in request.tasks:
            signature = task.model_spec.signature_name or contract.SERVING_DEFAULT
            if signature in signatures:
                raise wire.invalid(f"Duplicate evaluation of signature: {signature}")
            signatures.add(signature)
            if signature not in servable.signature_defs:
                raise wire.invalid(f"Requested signature not found in model graph: {signature}")
            result = response.results.add(model_spec=_spec_of(servable, task.model_spec))
            if task.method_name == contract.CLASSIFY_METHOD:
                result.classification_result.CopyFrom(servable.classify(signature, request.input))
            elif task.method_name == contract.REGRESS_METHOD:
                result.regression_result.CopyFrom(servable.regress(signature, request.input))
            else:
                raise wire.invalid(f"Unsupported signature method_name: {task.method_name}")
    return response


def metadata(core: ServerCore, request: get_model_metadata_pb2.GetModelMetadataRequest, _=None
             ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    _require_spec(request)
    if not request.metadata_field:
        raise wire.invalid("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != "signature_def":
            raise wire.invalid(f"Metadata field {field} is not supported")
    servable = core.servable(request.model_spec)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=_spec_of(servable, request.model_spec, request.model_spec.signature_name))
    response.metadata["signature_def"].Pack(signature_map)
    return response


def model_status(core: ServerCore, request: get_model_status_pb2.GetModelStatusRequest, _=None
                 ) -> get_model_status_pb2.GetModelStatusResponse:
    _require_spec(request)
    manager = core.manager(request.model_spec.name)
    spec = request.model_spec
    version = None
    if spec.WhichOneof("version_choice") == "version":
        version = spec.version.value
    elif spec.WhichOneof("version_choice") == "version_label":
        version = manager.servable(spec).version
    return get_model_status_pb2.GetModelStatusResponse(
        model_version_status=manager.status(version))


def reload_config(core: ServerCore, request: model_management_pb2.ReloadConfigRequest, _=None
                  ) -> model_management_pb2.ReloadConfigResponse:
    try:
        core.reload_config(request.config)
    except ValueError as error:
        raise wire.invalid(str(error)) from None
    return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto())


# --- calls, metrics and errors ------------------------------------------------------------------

@dataclasses.dataclass
class Api:
    """The server's state every call needs: models, limits, metrics."""

    core: ServerCore
    limits: Limits
    metrics: Metrics

    def call(self, work: Callable[[], T], name: str, api: str, entrypoint: str) -> T:
        """Runs one API call for model `name`: any failure becomes a ServingError; the request
        is counted, for gRPC and REST alike."""
        start = time.monotonic()
        try:
            response = work()
        except ServingError as error:
            self.metrics.record(name, api, entrypoint, error.code.name, None)
            raise
        except Exception as error:  # the server answers every request and keeps serving
            logging.exception("internal error in %s", api)
            self.metrics.record(name, api, entrypoint, "INTERNAL", None)
            raise ServingError(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"
                               ) from None
        self.metrics.record(name, api, entrypoint, "OK", (time.monotonic() - start) * 1e6)
        return response


# --- gRPC ---------------------------------------------------------------------------------------

def _model_name_of(request) -> str:
    if getattr(request, "tasks", None):
        return request.tasks[0].model_spec.name
    return getattr(getattr(request, "model_spec", None), "name", "")


def _grpc_method(function: Callable, api: str):
    def method(self, request, context):
        try:
            return self.api.call(lambda: function(self.api.core, request, self.api.limits),
                                 _model_name_of(request), api, "GRPC")
        except ServingError as error:
            context.abort(error.code, error.message)
    return method


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, api: Api):
        self.api = api

    Predict = _grpc_method(predict, "Predict")
    Classify = _grpc_method(classify, "Classify")
    Regress = _grpc_method(regress, "Regress")
    MultiInference = _grpc_method(multi_inference, "MultiInference")
    GetModelMetadata = _grpc_method(metadata, "GetModelMetadata")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, api: Api):
        self.api = api

    GetModelStatus = _grpc_method(model_status, "GetModelStatus")
    HandleReloadConfigRequest = _grpc_method(reload_config, "HandleReloadConfigRequest")


# --- REST ---------------------------------------------------------------------------------------

def _spec_from_path(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    """ParseModelInfo + FillModelSpecWithNameVersionAndLabel."""
    spec = model_pb2.ModelSpec(name=urllib.parse.unquote(name or ""))
    if version:
        if int(version) > _INT64_MAX:
            raise wire.invalid(f"Failed to convert version: {version} to numeric.")
        spec.version.value = int(version)
    if label:
        spec.version_label = urllib.parse.unquote(label)
    return spec


def _proto_json(message_: message.Message, preserve_names: bool) -> dict:
    return json_format.MessageToDict(message_, preserving_proto_field_name=preserve_names,
                                      always_print_fields_with_no_presence=True)


def rest_request(api: Api, http_method: str, path: str, body: bytes) -> tuple[str, str]:
    """HttpRestApiHandler::ProcessRequest: (API name for metrics, JSON text), or ServingError."""
    malformed = wire.invalid(f"Malformed request: {http_method} {path}")
    if http_method == "POST":
        match = _PREDICTION_PATH.fullmatch(path)
        if not match:
            raise malformed
        spec = _spec_from_path(*match.groups()[:3])
        verb = match[4].lower()
        return verb, api.call(lambda: _rest_post(api.core, spec, verb, body, api.limits),
                              spec.name, verb, "REST")
    if http_method == "GET":
        match = _STATUS_PATH.fullmatch(path)
        if not match:
            raise malformed
        spec = _spec_from_path(*match.groups()[:3])
        if not spec.name:
            raise wire.invalid("Missing model name in request.")
        if match[4]:
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=spec, metadata_field=["signature_def"])
            response = metadata(api.core, request)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signature_map)
            return "metadata", wire.dumps({
                "model_spec": _proto_json(response.model_spec, True),
                "metadata": {"signature_def": _proto_json(signature_map, True)}})
        response = model_status(api.core, get_model_status_pb2.GetModelStatusRequest(
            model_spec=spec))
        return "status", wire.dumps(_proto_json(response, False))
    raise malformed


def _rest_post(core: ServerCore, spec: model_pb2.ModelSpec, verb: str, body: bytes,
               limits: Limits) -> str:
    document = wire.parse_json(body)
    spec.signature_name = wire.signature_name_of(document)
    if verb == "predict":
        with core.use(spec) as servable:
            tensors, row = wire.predict_inputs_from_json(
                document, servable.input_dtypes(spec.signature_name))
            inputs = _checked_arrays(tensors, limits)
            return wire.json_from_outputs(servable.predict(spec.signature_name, inputs), row)
    request_input = wire.input_from_json(document)
    if verb == "classify":
        response = classify(core, classification_pb2.ClassificationRequest(
            model_spec=spec, input=request_input), limits)
        return wire.json_from_classification_result(response.result)
    response = regress(core, regression_pb2.RegressionRequest(model_spec=spec,
                                                               input=request_input), limits)
    return wire.json_from_regression_result(response.result)


class RestHandler(http_server.BaseHTTPRequestHandler):
    """TF Serving's REST API (and its Prometheus page) over the same functions as gRPC."""

    api: Api
    monitoring_path: str | None = None
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds an idle or half-sent connection may hold its thread

    def do_GET(self):
        if self.monitoring_path and self.path.split("?")[0] == self.monitoring_path:
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
            body = self._read_body()
            path = self.path.split("?")[0]
            if not re.fullmatch(r"/v1/.*", path, re.IGNORECASE):
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"No handler for {path}")
            _, output = rest_request(self.api, http_method, path, body)
            self._reply(200, output)
        except ServingError as error:
            self._reply_error(error)
        except Exception as error:  # the server answers every request and keeps serving
            logging.exception("internal error in REST %s %s", http_method, self.path)
            self._reply_error(ServingError(grpc.StatusCode.INTERNAL,
                                           f"{type(error).__name__}: {error}"))

    def _read_body(self) -> bytes:
        header = self.headers.get("Content-Length") or "0"
        if not header.isdigit():
            self.close_connection = True
            raise wire.invalid(f"Content-Length: {header!r} is not a non-negative integer")
        length = int(header)
        if length > self.api.limits.max_request_bytes:
            self.close_connection = True
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"request body of {length} bytes exceeds the limit of "
                               f"{self.api.limits.max_request_bytes} bytes")
        return self.rfile.read(length)

    def _reply_error(self, error: ServingError) -> None:
        self._reply(wire.http_status(error.code), wire.json_error(error.message))

    def _reply(self, status: int, text: str, content_type: str = "application/json") -> None:
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class RestServer(http_server.ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` at once: past that a connection is
    answered 503 (UNAVAILABLE, which clients retry) and closed instead of holding a thread."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections: int):
        super().__init__(address, handler)
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request) -> None:
        body = wire.json_error(f"the server holds {self.max_connections} connections "
                               "(--max_rest_connections); retry later").encode()
        try:
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json"
                            b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                            % (len(body), body))
        except OSError:
            pass
        self.shutdown_request(request)


# --- the server ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """What `start_server` needs beyond the models: TF Serving's flags, as values."""

    host: str = "127.0.0.1"
    port: int = 8500
    rest_api_port: int | None = 8501
    max_request_bytes: int = 64 << 20
    max_request_instances: int = 256
    max_rest_connections: int = 64
    file_system_poll_wait_seconds: float = 1.0
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: float = 0.0
    monitoring_config_file: str = ""
    enable_batching: bool = False
    batching_parameters_file: str = ""
    rest_api_timeout_in_ms: int = 0
    threads: int = 16


@dataclasses.dataclass
class LocalServer:
    """A running local server; `grpc_port` and `rest_port` are the bound ports."""

    core: ServerCore
    grpc_server: grpc.Server
    rest_server: RestServer | None
    grpc_port: int
    rest_port: int
    metrics: Metrics

    def stop(self) -> None:
        self.grpc_server.stop(grace=1).wait()
        if self.rest_server:
            self.rest_server.shutdown()
            self.rest_server.server_close()
        self.core.stop()


def _model_server_config(model_name: str, model_base_path: str | Path | None,
                         options: ServerOptions) -> ModelServerConfig:
    if options.model_config_file:
        return parse_text_proto(options.model_config_file, ModelServerConfig,
                                "model_config_file")
    if not model_base_path:
        raise CatdogError("give --model_base_path (one model) or --model_config_file (several)")
    return single_model_config(model_name, model_base_path)


def _servable_options(options: ServerOptions) -> dict:
    batching = None
    if options.enable_batching:
        proto = (parse_text_proto(options.batching_parameters_file, BatchingParameters,
                                  "batching_parameters_file")
                 if options.batching_parameters_file else BatchingParameters())
        try:
            batching = BatchingOptions.from_proto(proto)
        except ValueError as error:
            raise CatdogError(f"--batching_parameters_file={options.batching_parameters_file}: "
                              f"{error}") from None
    return {"batcher_options": batching, "timeout_ms": options.rest_api_timeout_in_ms}


def _monitoring_path(options: ServerOptions) -> str | None:
    if not options.monitoring_config_file:
        return None
    config = parse_text_proto(options.monitoring_config_file, MonitoringConfig,
                              "monitoring_config_file")
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or "/monitoring/prometheus/metrics"


def _watch_config_file(core: ServerCore, path: str, seconds: float) -> None:
    """Re-reads --model_config_file every `seconds` and applies it when it changed."""
    last = [Path(path).read_text()]

    def poll():
        text = Path(path).read_text()
        if text != last[0]:
            core.reload_config(parse_text_proto(path, ModelServerConfig, "model_config_file"))
            last[0] = text
            logging.info("applied the changed %s", path)

    core.every(seconds, poll, "config-poller")


def start_server(model_name: str = "catdog", model_base_path: str | Path | None = None,
                 options: ServerOptions = ServerOptions(), **overrides) -> LocalServer:
    """Loads the models and starts gRPC (and REST unless its port is None); port 0 picks a
    free port. `overrides` replace fields of `options` (e.g. port=0, rest_api_port=0)."""
    options = dataclasses.replace(options, **overrides)
    config = _model_server_config(model_name, model_base_path, options)
    monitoring_path = _monitoring_path(options)
    core = ServerCore(config, _servable_options(options))
    if not any(m.loaded_versions() for m in core.models()):
        core.stop()
        where = options.model_config_file or model_base_path
        raise CatdogError(f"{where} holds no loadable version (an integer-named folder with "
                          "saved_model.pb)")
    core.every(options.file_system_poll_wait_seconds, core.refresh, "version-poller")
    if options.model_config_file:
        _watch_config_file(core, options.model_config_file,
                           options.model_config_file_poll_wait_seconds)
    api = Api(core, Limits(options.max_request_bytes, options.max_request_instances), Metrics())
    grpc_server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=options.threads),
        options=[("grpc.max_receive_message_length", options.max_request_bytes),
                 ("grpc.max_send_message_length", -1)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(api), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(api), grpc_server)
    grpc_port = grpc_server.add_insecure_port(f"{options.host}:{options.port}")
    if grpc_port == 0:
        core.stop()
        raise CatdogError(f"--port={options.port}: cannot listen on {options.host}")
    grpc_server.start()
    rest_server, rest_port = None, 0
    if options.rest_api_port is not None:
        handler = type("Handler", (RestHandler,), {"api": api,
                                                   "monitoring_path": monitoring_path})
        try:
            rest_server = RestServer((options.host, options.rest_api_port), handler,
                                     options.max_rest_connections)
        except OSError as error:
            grpc_server.stop(None)
            core.stop()
            raise CatdogError(f"--rest_api_port={options.rest_api_port}: {error.strerror}"
                              ) from error
        rest_port = rest_server.server_address[1]
        threading.Thread(target=rest_server.serve_forever, name="rest", daemon=True).start()
    return LocalServer(core, grpc_server, rest_server, grpc_port, rest_port, api.metrics)


def options_from_flags(flag_values) -> ServerOptions:
    f = flag_values
    return ServerOptions(
        host=f.host, port=f.port, rest_api_port=f.rest_api_port or None,
        max_request_bytes=f.max_request_bytes, max_request_instances=f.max_request_instances,
        max_rest_connections=f.max_rest_connections,
        file_system_poll_wait_seconds=f.file_system_poll_wait_seconds,
        model_config_file=f.model_config_file,
        model_config_file_poll_wait_seconds=f.model_config_file_poll_wait_seconds,
        monitoring_config_file=f.monitoring_config_file, enable_batching=f.enable_batching,
        batching_parameters_file=f.batching_parameters_file,
        rest_api_timeout_in_ms=f.rest_api_timeout_in_ms)


def main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise CatdogError(f"unexpected arguments {list(argv[1:])}")
    f = flags.FLAGS
    options = options_from_flags(f)
    server = start_server(f.model_name, f.model_base_path if not f.model_config_file else None,
                          options)
    models = ", ".join(sorted(m.name for m in server.core.models()))
    print(f"serving {models} on gRPC {options.host}:{server.grpc_port}"
          + (f" and REST http://{options.host}:{server.rest_port}" if server.rest_server else ""),
          flush=True)
    try:
        server.grpc_server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def run() -> None:
    """The `catdog-serve` console script (and `python -m catdog.serve`)."""
    from catdog import cli, flags as catdog_flags

    cli.run(main, catdog_flags.define_serve_flags)


if __name__ == "__main__":
    run()
