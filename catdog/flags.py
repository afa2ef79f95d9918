"""Command-line flags, defined and validated once, and turned into a `Config`.

Every flag is checked when the command line is parsed, so a bad value stops the program before any
work with one line naming the flag and what is valid. Each entry point defines the set it needs
just before parsing (`catdog.cli.run`); only `main()` functions read flags, and library code takes
the `Config` that `config_from_flags` builds, or plain values.
"""

from __future__ import annotations

import dataclasses
import os
import re

from absl import flags

from catdog import config as config_lib

# How --help groups the training flags (the groups of Config's fields); every other catdog flag
# is listed under "options".
HELP_GROUPS = {
    group: tuple(name for name, field in config_lib.fields().items()
                 if field.metadata["group"] == group)
    for group in config_lib.HELP_GROUPS}

_DEFINE_BY_TYPE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                   float: flags.DEFINE_float, str: flags.DEFINE_string}


def define_train_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one flag per `Config` field on `flag_values` (the global FLAGS unless a test
    passes its own), with the field's default, help and checks; `python -m catdog.train` and
    `python -m catdog.data` use them. Rules between flags are Config's too."""
    for name, field in config_lib.fields().items():
        _define_setting(name, field, flag_values)
    for names, holds, message in config_lib.CROSS_FIELD_RULES:
        flags.register_multi_flags_validator(
            list(names), lambda values, names=names, holds=holds: holds(
                *(values[name] for name in names)),
            message=message, flag_values=flag_values)


def _define_setting(name: str, field: dataclasses.Field, fv: flags.FlagValues) -> None:
    hint, help_text = config_lib.field_type(name), field.metadata["help"]
    if config_lib.choices(name):
        flags.DEFINE_enum(name, field.default, config_lib.choices(name), help_text,
                          flag_values=fv)
    elif hint in _DEFINE_BY_TYPE:
        _DEFINE_BY_TYPE[hint](name, field.default, help_text, flag_values=fv)
    else:  # tuple[str, ...]
        flags.DEFINE_list(name, list(field.default), help_text, flag_values=fv)

    def check(value) -> bool:
        problem = config_lib.setting_problem(name, _as_field_value(name, value))
        if problem:
            raise flags.ValidationError(problem)
        return True

    flags.register_validator(name, check, flag_values=fv)


def _as_field_value(name: str, value):
    return tuple(value or ()) if config_lib.field_type(name) == tuple[str, ...] else value


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> config_lib.Config:
    """The `Config` that the parsed training flags describe."""
    return config_lib.Config(**{name: _as_field_value(name, flag_values[name].value)
                                for name in config_lib.fields()})


def define_data_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.data`: the training flags, and where `prepare` writes."""
    define_train_flags(flag_values)
    flags.DEFINE_string("output_dir", "", "prepare: the new folder of decoded shards to write.",
                        flag_values=flag_values)
    flags.DEFINE_integer("shard_images", 2048, "prepare: images per shard (at most).",
                         lower_bound=1, flag_values=flag_values)


def define_max_image_pixels(flag_values: flags.FlagValues) -> None:
    """--max_image_pixels, as training defines it, for the commands that read image files but
    do not train (evaluate, predict)."""
    _define_setting("max_image_pixels", config_lib.fields()["max_image_pixels"], flag_values)


def define_serve_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.serve`, named as TF Serving's own model server names them."""
    fv = flag_values
    flags.DEFINE_string("model_name", "catdog", "Name clients use for the model.", flag_values=fv)
    flags.DEFINE_string("model_base_path", "export/catdog",
                        "Folder holding integer-named SavedModel versions.", flag_values=fv)
    flags.DEFINE_integer("port", 8500, "gRPC port.", lower_bound=0, upper_bound=65535,
                         flag_values=fv)
    flags.DEFINE_integer("rest_api_port", 8501, "REST port; 0 turns REST off.", lower_bound=0,
                         upper_bound=65535, flag_values=fv)
    flags.DEFINE_string("host", "127.0.0.1",
                        "Address to bind; 0.0.0.0 exposes the server to the network.",
                        flag_values=fv)
    flags.DEFINE_integer("max_request_bytes", 64 << 20,
                         "Largest request accepted (gRPC message or REST body).",
                         lower_bound=1024, flag_values=fv)
    flags.DEFINE_integer("max_request_instances", 256,
                         "Most instances (batch size or tf.Examples) one request may hold.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("max_rest_connections", 64,
                         "Most REST connections served at once; more are answered 503.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("file_system_poll_wait_seconds", 1.0,
                       "How often to look for new or removed versions.", lower_bound=0.05,
                       flag_values=fv)
    flags.DEFINE_string("model_config_file", "",
                        "A ModelServerConfig text proto (several models, version policies, "
                        "version labels); replaces --model_name/--model_base_path.",
                        flag_values=fv)
    flags.DEFINE_float("model_config_file_poll_wait_seconds", 0.0,
                       "How often to re-read --model_config_file; 0 reads it once.",
                       lower_bound=0.0, flag_values=fv)
    flags.DEFINE_string("monitoring_config_file", "",
                        "A MonitoringConfig text proto; enables Prometheus metrics on the REST "
                        "port.", flag_values=fv)
    flags.DEFINE_bool("enable_batching", False,
                      "Batch concurrent Predict requests into one session run.", flag_values=fv)
    flags.DEFINE_string("batching_parameters_file", "",
                        "A BatchingParameters text proto (with --enable_batching).",
                        flag_values=fv)
    flags.DEFINE_integer("rest_api_timeout_in_ms", 0,
                         "Session run timeout of a request; 0 means none.", lower_bound=0,
                         flag_values=fv)
    flags.register_multi_flags_validator(
        ["model_base_path", "model_config_file"],
        lambda f: bool(f["model_config_file"]) or os.path.isdir(f["model_base_path"]),
        message="--model_base_path must be an existing folder of SavedModel versions "
                "(e.g. export/catdog), unless --model_config_file is given", flag_values=fv)
    for name in ("model_config_file", "monitoring_config_file", "batching_parameters_file"):
        flags.register_validator(
            name, lambda path: not path or os.path.isfile(path),
            message="must name an existing text proto file", flag_values=fv)


def define_client_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.client`."""
    fv = flag_values
    flags.DEFINE_string("server", "grpc://127.0.0.1:8500",
                        "grpc://host:port (TF Serving's --port) or http://host:port "
                        "(its --rest_api_port).", flag_values=fv)
    flags.DEFINE_string("model", "catdog", "Model name on the server.", flag_values=fv)
    flags.DEFINE_integer("model_version", 0, "Version to ask for; 0 means the newest.",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_float("timeout", 10.0, "Seconds to wait for each request.", lower_bound=0.01,
                       flag_values=fv)
    flags.DEFINE_integer("retries", 3, "Retries when the server is UNAVAILABLE.", lower_bound=0,
                         flag_values=fv)
    flags.register_validator(
        "server", lambda v: bool(re.match(r"^(grpc|https?)://[^/]+:\d+/?$", v)),
        message="must be grpc://host:port or http://host:port", flag_values=fv)


def define_data_service_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.data_service dispatcher|worker`."""
    fv = flag_values
    flags.DEFINE_integer("port", 0, "Port to listen on; 0 picks a free one.", lower_bound=0,
                         upper_bound=65535, flag_values=fv)
    flags.DEFINE_string("dispatcher", "", "worker: the dispatcher's host:port.", flag_values=fv)
    flags.DEFINE_string("worker_address", "",
                        "worker: the host:port trainers reach it at; empty: localhost:--port.",
                        flag_values=fv)


def define_evaluate_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.evaluate`."""
    fv = flag_values
    _define_model_flag(fv)
    flags.DEFINE_string("data_dir", None, "Folder with one sub-folder of images per class.",
                        flag_values=fv)
    flags.DEFINE_string("output_dir", "evaluation",
                        "Where report.json, report.md and misclassified.png are written.",
                        flag_values=fv)
    flags.DEFINE_integer("batch_size", 32, "Images per forward pass.", lower_bound=1,
                         flag_values=fv)
    flags.mark_flag_as_required("data_dir", flag_values=fv)
    flags.register_validator("data_dir", lambda v: v is None or os.path.isdir(v),
                             message="must be an existing folder with one sub-folder per class",
                             flag_values=fv)


def define_predict_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.predict`."""
    fv = flag_values
    _define_model_flag(fv)
    flags.DEFINE_enum("format", "text", ("text", "jsonl"),
                      "text: 'path<TAB>label<TAB>probability' lines; jsonl: one JSON object a line.",
                      flag_values=fv)
    flags.DEFINE_integer("batch_size", 32, "Images per forward pass.", lower_bound=1,
                         flag_values=fv)


def _define_model_flag(fv: flags.FlagValues) -> None:
    define_max_image_pixels(fv)
    _define_setting("mixed_precision", config_lib.fields()["mixed_precision"], fv)
    flags.DEFINE_string("model", None,
                        "An exported model: the .h5 file or a SavedModel version folder "
                        "(export/catdog/<N>).", flag_values=fv)
    flags.mark_flag_as_required("model", flag_values=fv)
    flags.register_validator(
        "model", lambda v: v is None or os.path.isfile(v) or os.path.isfile(
            os.path.join(v, "saved_model.pb")),
        message="must be a .h5 file or a SavedModel version folder holding saved_model.pb",
        flag_values=fv)
