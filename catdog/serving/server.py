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
metrics. What it does not do is listed in docs/serving.md ("Differences from TF Serving").
This module assembles the parts (server_core, api and its two transports, options) and holds
`main`; like all of catdog.serving it imports no training code.
"""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import concurrent.futures
import dataclasses
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

import grpc
from absl import flags, logging

from catdog.errors import CatdogError
from catdog.serving import grpc_service
from catdog.serving import options as options_lib
from catdog.serving.api import DEFAULTS, Api
from catdog.serving.batching import BatchingOptions
from catdog.serving.config_files import (
    BatchingParameters,
    ModelServerConfig,
    MonitoringConfig,
    parse_text_proto,
)
from catdog.serving.metrics import Metrics
from catdog.serving.options import ServerOptions
from catdog.serving.rest import RestHandler, RestServer
from catdog.serving.server_core import ModelManager, ServerCore, single_model_config
from catdog.serving.status import ServingError


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


def _model_server_config(options: ServerOptions) -> ModelServerConfig:
    if options.model_config_file:
        return parse_text_proto(options.model_config_file, ModelServerConfig,
                                "model_config_file")
    if not options.model_base_path:
        raise CatdogError("give --model_base_path (one model) or --model_config_file (several)")
    return single_model_config(options.model_name, options.model_base_path)


def _channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """--grpc_channel_arguments as gRPC options: integers where the value parses as one, as
    TF Serving's server.cc passes them."""
    arguments = []
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        arguments.append((key, int(value) if value.lstrip("-").isdigit() else value))
    return arguments


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
    return {"batcher_options": batching, "timeout_ms": options.rest_api_timeout_in_ms,
            "method_name_check": options.enable_signature_method_name_check,
            "verify_graph_ops": options.verify_graph_ops,
            "enable_model_warmup": options.enable_model_warmup}


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


def start_server(model_name: str | None = None, model_base_path: str | Path | None = None,
                 options: ServerOptions = DEFAULTS, **overrides) -> LocalServer:
    """Loads the models and starts gRPC (and REST unless its port is None); port 0 picks a
    free port. A port in use is found before any model loads, but the ports listen only once a
    version serves, as TF Serving's do (an open port means ready). `model_name`,
    `model_base_path` and `overrides` replace fields of `options` (e.g. port=0,
    rest_api_port=0)."""
    if model_name is not None:
        overrides["model_name"] = model_name
    if model_base_path is not None:
        overrides["model_base_path"] = str(model_base_path)
    options = dataclasses.replace(options, **overrides)
    config = _model_server_config(options)
    monitoring_path = _monitoring_path(options)
    if not options.verify_graph_ops:
        logging.warning("graph ops not verified (--noverify_graph_ops): a version's graph may "
                        "run any op it holds, file reads and writes and Python included")
    _check_ports_free(options)
    core = _loaded_core(config, options)
    core.every(options.file_system_poll_wait_seconds, core.refresh, "version-poller")
    if options.model_config_file:
        _watch_config_file(core, options.model_config_file,
                           options.model_config_file_poll_wait_seconds)
    server_api = Api(core, options, Metrics(
        is_served=lambda name: any(m.name == name for m in core.models())))
    try:
        grpc_server, grpc_port = _bound_grpc_server(options)
    except CatdogError:
        core.stop()
        raise
    grpc_service.add_services(grpc_server, server_api)
    grpc_server.start()
    rest_server, rest_port = None, 0
    if options.rest_api_port is not None:
        handler = type("Handler", (RestHandler,), {
            "api": server_api, "monitoring_path": monitoring_path,
            "request_timeout": options.rest_request_timeout_seconds})
        try:
            rest_server = RestServer((options.host, options.rest_api_port), handler,
                                     options.max_rest_connections,
                                     options.rest_memory_budget_bytes)
        except OSError as error:
            grpc_server.stop(None)
            core.stop()
            raise CatdogError(f"--rest_api_port={options.rest_api_port}: cannot listen on "
                              f"{options.host}: {error.strerror}") from None
        rest_port = rest_server.server_address[1]
        threading.Thread(target=rest_server.serve_forever, name="rest", daemon=True).start()
    return LocalServer(core, grpc_server, rest_server, grpc_port, rest_port, server_api.metrics)


def _check_ports_free(options: ServerOptions) -> None:
    """Binds each fixed port for a moment (loading a model takes seconds; a taken port should
    not wait for them); port 0 is always free."""
    for flag, port in (("port", options.port), ("rest_api_port", options.rest_api_port)):
        if not port:
            continue
        with socket.socket(socket.AF_INET6 if ":" in options.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((options.host, port))
            except OSError as error:
                raise CatdogError(f"--{flag}={port}: cannot listen on {options.host}: "
                                  f"{error.strerror}") from None


def _bound_grpc_server(options: ServerOptions) -> tuple[grpc.Server, int]:
    """A gRPC server with its port (and socket) bound, not yet started."""
    grpc_server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=options.grpc_max_threads),
        options=[("grpc.max_receive_message_length", options.max_request_bytes),
                 ("grpc.max_send_message_length", -1),
                 *_channel_arguments(options.grpc_channel_arguments)])
    try:
        grpc_port = grpc_server.add_insecure_port(f"{options.host}:{options.port}")
    except RuntimeError:  # grpcio raises where older versions returned 0
        grpc_port = 0
    if grpc_port == 0:
        raise CatdogError(f"--port={options.port}: cannot listen on {options.host} (in use, "
                          "or not an address of this machine)")
    if options.grpc_socket_path and not grpc_server.add_insecure_port(
            f"unix:{options.grpc_socket_path}"):
        grpc_server.stop(None)
        raise CatdogError(f"--grpc_socket_path={options.grpc_socket_path}: cannot listen there")
    return grpc_server, grpc_port


def _loaded_core(config: ModelServerConfig, options: ServerOptions) -> ServerCore:
    """The models of `config`, loaded; or the one line saying why none can serve."""
    try:
        core = ServerCore(config, _servable_options(options),
                          options.allow_version_labels_for_unavailable_models,
                          options.model_base_path_root)
    except ServingError as error:  # TF Serving refuses to start on it too
        where = f"--model_config_file={options.model_config_file}" \
            if options.model_config_file else f"--model_base_path={options.model_base_path}"
        hint = (" (start with --allow_version_labels_for_unavailable_models, as TF Serving "
                "needs too)" if "label" in error.message else "")
        raise CatdogError(f"{where}: {error.message}{hint}") from None
    if not any(m.loaded_versions() for m in core.models()):
        core.stop()
        raise CatdogError(_nothing_to_serve(options, core.models()))
    return core


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise CatdogError(f"unexpected arguments {list(argv[1:])}")
    if flags.FLAGS.version:
        print(version_text())
        return
    options = options_lib.from_flags(flags.FLAGS)
    server = start_server(options=options)
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
    from catdog import cli

    cli.run_command("serve", main)


def _nothing_to_serve(options: ServerOptions, models: list[ModelManager]) -> str:
    """Why the server cannot start: each base path it looked at, and what it found there (the
    newest version's load failure, when a version was there but did not load)."""
    where = (f"--model_config_file={options.model_config_file}" if options.model_config_file
             else f"--model_base_path={options.model_base_path}")
    base_paths = [Path(model.config.base_path) for model in models]
    found = [_found_at(Path(model.config.base_path), model.failures()) for model in models]
    hint = ("; a model config's base_path is a path on the machine the server runs on "
            "(serving/models.config names the container's /models/...; "
            "serving/models.local.config names ./export/...)"
            if options.model_config_file and not all(p.exists() for p in base_paths) else "")
    return f"{where}: {'; '.join(found)}{hint}"


def _found_at(base_path: Path, failures: dict[int, str]) -> str:
    if not base_path.exists():
        return f"{base_path.resolve()} does not exist"
    if failures:
        newest = max(failures)
        return f"{base_path.resolve()} version {newest} did not load: {failures[newest]}"
    return (f"{base_path.resolve()} holds no loadable version (an integer-named folder with "
            "saved_model.pb)")


def version_text() -> str:
    """What --version prints, in TF Serving's two lines."""
    import tensorflow as tf

    from catdog.version import __version__

    return (f"TensorFlow ModelServer: catdog.serve {__version__} (a TF Serving stand-in)\n"
            f"TensorFlow Library: {tf.__version__}")


if __name__ == "__main__":
    run()
