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

from absl import flags

from catdog import contract, fields
from catdog.fields import Check, CrossRule

_TEXT_PROTO_FILE: Check = (lambda path: not path or os.path.isfile(path),
                           "must name an existing text proto file")


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """What `start_server` needs: TF Serving's flags, as values. `rest_api_port=None` turns REST
    off (the flag's 0); port 0 in code picks a free port."""

    model_name: str = fields.setting(contract.DEFAULT_MODEL_NAME,
                                     "Name clients use for the model.")
    model_base_path: str = fields.setting(
        f"export/{contract.DEFAULT_MODEL_NAME}",
        "Folder holding integer-named SavedModel versions.")
    port: int = fields.setting(contract.DEFAULT_GRPC_PORT, "gRPC port.", at_least=0,
                               at_most=65535)
    rest_api_port: int | None = fields.setting(
        contract.DEFAULT_REST_PORT, "REST port; 0 turns REST off.", at_least=0, at_most=65535)
    host: str = fields.setting("127.0.0.1",
                               "Address to bind; 0.0.0.0 exposes the server to the network.")
    max_request_bytes: int = fields.setting(
        64 << 20, "Largest request accepted (gRPC message or REST body).", at_least=1024)
    max_request_instances: int = fields.setting(
        256, "Most instances (batch size or tf.Examples) one request may hold.", at_least=1)
    max_rest_connections: int = fields.setting(
        64, "Most REST connections served at once; more are answered 503.", at_least=1)
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
    enable_batching: bool = fields.setting(
        False, "Batch concurrent Predict requests into one session run.")
    batching_parameters_file: str = fields.setting(
        "", "A BatchingParameters text proto (with --enable_batching).", check=_TEXT_PROTO_FILE)
    rest_api_timeout_in_ms: int = fields.setting(
        0, "Session run timeout of a request; 0 means none.", at_least=0)
    grpc_max_threads: int = fields.setting(
        16, "Threads serving gRPC requests at once.", at_least=1)

    def __post_init__(self):
        fields.validate(self)


# Checked when the flags are parsed, not when a ServerOptions is built: the default base path
# need not exist for a server given its models in code or in a config file.
COMMAND_LINE_RULES: tuple[CrossRule, ...] = (
    (("model_base_path", "model_config_file"),
     lambda base_path, config_file: bool(config_file) or os.path.isdir(base_path),
     "--model_base_path must be an existing folder of SavedModel versions (e.g. "
     f"export/{contract.DEFAULT_MODEL_NAME}), unless --model_config_file is given"),
)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.serve`: one per ServerOptions field."""
    for name in fields.fields(ServerOptions):
        fields.define_flag(ServerOptions, name, flag_values)
    fields.register_cross_rules(COMMAND_LINE_RULES, flag_values)


def from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> ServerOptions:
    """The ServerOptions the parsed serve flags describe."""
    return fields.from_flags(ServerOptions, flag_values)
