"""The server's options, each once: type, default, bounds and help as field metadata.

`ServerOptions` is to the server what `Config` is to training (both built with catdog.fields):
it checks itself when built, `define_flags` offers every field as the flag of the same name (TF
Serving's name where TF Serving has the option, as its main.cc binds each flag to one
`Server::Options` field), and `from_flags` reads them back. A default changed here changes
`--help` and the server alike.
"""

from __future__ import annotations

import dataclasses
import os
import re

from absl import flags

from catdog import contract, fields
from catdog.fields import Check

_TEXT_PROTO_FILE: Check = (lambda path: not path or os.path.isfile(path),
                           "must name an existing text proto file")
_CHANNEL_ARGUMENTS: Check = (
    lambda text: not text or all(item.count("=") == 1 and item.split("=")[0]
                                 for item in text.split(",")),
    "must be comma-separated key=value gRPC channel arguments, e.g. "
    "grpc.max_connection_age_ms=2000")
TF_SERVING_DEFAULT_MODEL_NAME = "default"  # TF Serving's --model_name default


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        return 4 << 30


DEFAULT_REST_MEMORY_BUDGET = min(1 << 30, _physical_memory() // 4)


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """What `start_server` needs: TF Serving's flags, as values. `rest_api_port=None` turns REST
    off (the flag's 0); port 0 in code picks a free port."""

    model_name: str = fields.setting(
        TF_SERVING_DEFAULT_MODEL_NAME, "Name clients use for the model given by "
        "--model_base_path (TF Serving's default; catdog's configs pass --model_name=catdog).")
    model_base_path: str = fields.setting(
        f"export/{contract.DEFAULT_MODEL_NAME}",
        "Folder holding integer-named SavedModel versions.")
    model_base_path_root: str = fields.setting(
        "", "If set, every base path a model config may name (--model_base_path, "
        "--model_config_file, HandleReloadConfigRequest) must lie in this folder; others are "
        "refused with INVALID_ARGUMENT. A publish gate's candidate folder is refused always.")
    port: int = fields.setting(contract.DEFAULT_GRPC_PORT, "gRPC port.", at_least=0,
                               at_most=65535)
    grpc_socket_path: str = fields.setting(
        "", "If non-empty, also serve gRPC on a UNIX socket at this path.")
    grpc_channel_arguments: str = fields.setting(
        "", "Comma-separated key=value arguments passed to the gRPC server (e.g. "
        "grpc.max_connection_age_ms=2000); numbers are passed as integers.",
        check=_CHANNEL_ARGUMENTS)
    rest_api_port: int | None = fields.setting(
        contract.DEFAULT_REST_PORT, "REST port; 0 turns REST off.", at_least=0, at_most=65535)
    host: str = fields.setting("127.0.0.1",
                               "Address to bind; 0.0.0.0 exposes the server to the network.")
    max_request_bytes: int = fields.setting(
        64 << 20, "Largest request accepted (gRPC message or REST body).", at_least=1024)
    max_request_instances: int = fields.setting(
        256, "Most instances (batch size or tf.Examples) one request may hold.", at_least=1)
    max_rest_connections: int = fields.setting(
        64, "Most REST requests processed at once; more are answered 503. Up to 8 times as "
        "many connections may be open (sending, or idle between requests).", at_least=1)
    rest_memory_budget_bytes: int = fields.setting(
        DEFAULT_REST_MEMORY_BUDGET, "Memory the REST requests in flight may take together: "
        "each reserves its body before reading it and the parse its values need (about 120 "
        "bytes a JSON number) before parsing; one that would pass the budget is answered 429 "
        "at once. Default: a quarter of this machine's memory, at most 1 GiB.", at_least=1 << 20)
    rest_request_timeout_seconds: float = fields.setting(
        30.0, "Seconds a REST client has to send each whole request, headers and body; a "
        "slower one is disconnected (keeps slow senders from holding connections).",
        at_least=0.1)
    file_system_poll_wait_seconds: float = fields.setting(
        1.0, "How often to look for new or removed versions.", at_least=0.05)
    model_config_file: str = fields.setting(
        "", "A ModelServerConfig text proto (several models, version policies, version "
        "labels); replaces --model_name/--model_base_path.", check=_TEXT_PROTO_FILE)
    model_config_file_poll_wait_seconds: float = fields.setting(
        0.0, "How often to re-read --model_config_file; 0 reads it once.", at_least=0.0)
    monitoring_config_file: str = fields.setting(
        "", "A MonitoringConfig text proto; enables Prometheus metrics on the REST port.",
        check=_TEXT_PROTO_FILE)
    allow_version_labels_for_unavailable_models: bool = fields.setting(
        False, "Allow a version label on a version that is not AVAILABLE yet (a new label, "
        "or one that keeps its version), as TF Serving's flag does.")
    enable_signature_method_name_check: bool = fields.setting(
        False, "Refuse a request whose signature's method_name does not match the API "
        "(Predict, Classify, Regress), as TF Serving's flag does.")
    enable_batching: bool = fields.setting(
        False, "Batch concurrent Predict requests into one session run.")
    batching_parameters_file: str = fields.setting(
        "", "A BatchingParameters text proto (with --enable_batching).", check=_TEXT_PROTO_FILE)
    rest_api_timeout_in_ms: int = fields.setting(
        0, "Session run timeout of a request; 0 means none.", at_least=0)
    verify_graph_ops: bool = fields.setting(
        True, "Load only SavedModels whose graph holds no op catdog's exporter never writes "
        "(file I/O, Python, custom ops): a version that does is refused at load with one line "
        "naming the op. Turn off (--noverify_graph_ops) to serve your own non-catdog models; "
        "TF Serving has no such check.")
    enable_model_warmup: bool = fields.setting(
        True, "Replay each version's assets.extra/tf_serving_warmup_requests when it loads, as "
        "TF Serving's flag does: TensorFlow's lazy initialisation happens before the version "
        "serves, not in its first requests, and a warm-up request that fails fails the load. "
        "--noenable_model_warmup loads faster and skips that check.")
    grpc_max_threads: int = fields.setting(
        16, "Threads serving gRPC requests at once.", at_least=1)

    def __post_init__(self):
        fields.validate(self)


def models_given(base_path: str, config_file: str) -> bool:
    """Whether a command line names its models: an existing base path, or a config file.
    Checked when the flags are parsed, not when a ServerOptions is built: the default base path
    need not exist for a server given its models in code."""
    return bool(config_file) or os.path.isdir(base_path)


NO_MODELS = ("--model_base_path must be an existing folder of SavedModel versions (e.g. "
             f"export/{contract.DEFAULT_MODEL_NAME}), unless --model_config_file is given")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """One flag per ServerOptions field, with its default, help and checks."""
    for name in fields.fields(ServerOptions):
        fields.define_flag(ServerOptions, name, flag_values)


def from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> ServerOptions:
    """The ServerOptions the parsed serve flags describe."""
    return fields.from_flags(ServerOptions, flag_values)


def define_serve_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The serve flags: one per ServerOptions field, and --version."""
    define_flags(flag_values)
    flags.DEFINE_bool("version", False, "Print the server's and TensorFlow's versions and exit "
                      "(as TF Serving's --version).", flag_values=flag_values)
    flags.register_multi_flags_validator(
        ["version", "model_base_path", "model_config_file"],
        lambda f: f["version"] or models_given(f["model_base_path"], f["model_config_file"]),
        message=NO_MODELS, flag_values=flag_values)


def define_client_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.client`."""
    fv = flag_values
    flags.DEFINE_string("server", f"grpc://127.0.0.1:{contract.DEFAULT_GRPC_PORT}",
                        "grpc://host:port (TF Serving's --port) or http://host:port "
                        "(its --rest_api_port).", flag_values=fv)
    flags.DEFINE_string("model", contract.DEFAULT_MODEL_NAME, "Model name on the server.",
                        flag_values=fv)
    flags.DEFINE_integer("model_version", 0, "Version to ask for; 0 means the newest.",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_float("timeout", 10.0, "Seconds to wait for each request.", lower_bound=0.01,
                       flag_values=fv)
    flags.DEFINE_integer("retries", 3, "Retries when the server is UNAVAILABLE.", lower_bound=0,
                         flag_values=fv)
    flags.register_validator(
        "server", lambda v: bool(re.match(r"^(grpc|https?)://[^/]+:\d+/?$", v)),
        message="must be grpc://host:port or http://host:port", flag_values=fv)

