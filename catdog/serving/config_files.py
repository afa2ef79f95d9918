"""TF Serving's config files, parsed as the text protos TF Serving itself parses.

`ModelServerConfig` comes with tensorflow-serving-api. `MonitoringConfig` and
`BatchingParameters` do not ship in that package, so they are declared here field for field from
TF Serving's `config/monitoring_config.proto` and
`servables/tensorflow/session_bundle_config.proto`, and text_format parses them with the same
strictness (an unknown field is an error).
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,  # noqa: F401  (registers the wrapper types)
)
from tensorflow_serving.config import model_server_config_pb2

from catdog.errors import CatdogError

_F = descriptor_pb2.FieldDescriptorProto


def _declare() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto.FromString(
        wrappers_pb2.DESCRIPTOR.serialized_pb).SerializeToString())
    file = descriptor_pb2.FileDescriptorProto(
        name="catdog/tf_serving_configs.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])

    def message(name, *fields):
        proto = file.message_type.add(name=name)
        for number, (field_name, kind, type_name, repeated) in enumerate(fields, 1):
            proto.field.add(name=field_name, number=number, type=kind, type_name=type_name,
                            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)

    msg, i64 = _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"
    message("PrometheusConfig", ("enable", _F.TYPE_BOOL, None, False),
            ("path", _F.TYPE_STRING, None, False))
    message("MonitoringConfig",
            ("prometheus_config", msg, ".tensorflow.serving.PrometheusConfig", False))
    message("BatchingParameters",
            ("max_batch_size", msg, i64, False), ("batch_timeout_micros", msg, i64, False),
            ("max_enqueued_batches", msg, i64, False), ("num_batch_threads", msg, i64, False),
            ("thread_pool_name", msg, ".google.protobuf.StringValue", False),
            ("allowed_batch_sizes", _F.TYPE_INT64, None, True),
            ("pad_variable_length_inputs", _F.TYPE_BOOL, None, False),
            ("enable_large_batch_splitting", msg, ".google.protobuf.BoolValue", False),
            ("max_execution_batch_size", msg, i64, False))
    pool.Add(file)
    return pool


_POOL = _declare()
MonitoringConfig = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))
BatchingParameters = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))
ModelServerConfig = model_server_config_pb2.ModelServerConfig


def parse_text_proto(path: str | Path, message_class, flag: str):
    """Reads a text-format proto file; a missing or malformed file is one CatdogError line
    (TF Serving words it "Error parsing text-format tensorflow.serving.<Message>")."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise CatdogError(f"--{flag}={path}: {error.strerror}") from None
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise CatdogError(f"--{flag}={path}: Error parsing text-format "
                          f"{message.DESCRIPTOR.full_name}: {error}") from None
    return message
