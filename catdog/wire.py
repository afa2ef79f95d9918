"""TensorFlow Serving's wire format, defined once for the client, the local server and the tests.

REST (tensorflow_serving/g3doc/api_rest.md, util/json_tensor.cc): a predict body holds an optional
`signature_name` and either row `instances` or columnar `inputs`; binary strings travel as
`{"b64": "<standard base64>"}`, and a DT_STRING output whose name ends in `_bytes` is written back
that way. Errors are `{"error": "<message>"}` with the HTTP status `http_status` gives.
gRPC: tensors are TensorProtos, errors are status codes with the same messages.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import tensorflow as tf

BYTES_SUFFIX = "_bytes"

# model_servers/http_server.cc, ToHTTPStatusCode.
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.CANCELLED: 499,
}
_CODE_OF_TF_ERROR = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """An error as TF Serving reports it: a gRPC status code and the server's message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_tf_error(cls, error: tf.errors.OpError) -> ServingError:
        """TensorFlow's error codes are gRPC's, so a session error keeps its code."""
        return cls(_CODE_OF_TF_ERROR.get(error.error_code, grpc.StatusCode.UNKNOWN),
                   error.message.split("\n\t")[0].strip())


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, 500)


def code_of_http_status(status: int) -> grpc.StatusCode:
    """The most specific gRPC code that TF Serving maps to `status` (for REST clients)."""
    for code, http in _HTTP_STATUS.items():
        if http == status:
            return code
    return grpc.StatusCode.UNKNOWN


# --- JSON values ⇄ numpy -----------------------------------------------------------------------

def _decode_json_value(value: Any) -> Any:
    """Nested JSON lists with {"b64": ...} objects → the same nesting with bytes."""
    if isinstance(value, list):
        return [_decode_json_value(v) for v in value]
    if isinstance(value, dict):
        if list(value) != ["b64"] or not isinstance(value["b64"], str):
            raise invalid("JSON object: a binary value must be an object with one key 'b64' "
                          "and a string value")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid("Unable to base64 decode") from None
    if isinstance(value, str):
        return value.encode()
    return value


def json_to_array(value: Any, dtype: tf.dtypes.DType, name: str) -> np.ndarray:
    """A JSON tensor value as a numpy array of the input's dtype, or INVALID_ARGUMENT."""
    decoded = _decode_json_value(value)
    try:
        if dtype == tf.string:
            array = np.array(decoded, dtype=object)
            if array.dtype != object or not all(isinstance(v, bytes) for v in array.flat):
                raise ValueError("expected strings")
            return array
        array = np.array(decoded)
        if array.dtype == object or array.dtype.kind in "SU" or (
                dtype.is_integer and array.dtype.kind == "f"):
            raise ValueError(f"expected {dtype.name} numbers")
        return array.astype(dtype.as_numpy_dtype)
    except ValueError as error:
        raise invalid(f"input '{name}': {error} of one shape "
                      f"(a {dtype.name} tensor, nested lists of equal length)") from None


def array_to_json(array: np.ndarray, name: str) -> Any:
    """A numpy output as JSON: bytes as {"b64"} for `*_bytes` outputs, else as text."""
    if array.dtype == object:
        if name.endswith(BYTES_SUFFIX):
            return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode()},
                                otypes=[object])(array).tolist()
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(
            array).tolist()
    return array.tolist()


def bytes_to_json(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


# --- REST predict ------------------------------------------------------------------------------

def parse_predict_body(body: Any, input_dtypes: Mapping[str, tf.dtypes.DType]
                       ) -> tuple[dict[str, np.ndarray], bool]:
    """A predict body's inputs as arrays, and whether it was row format (`instances`)."""
    if not isinstance(body, dict):
        raise invalid("JSON body must be an object")
    if ("instances" in body) == ("inputs" in body):
        raise invalid("JSON Value: body must have either 'instances' (row format) or 'inputs' "
                      "(columnar format), not both or neither")
    row = "instances" in body
    value = body["instances" if row else "inputs"]
    names = sorted(input_dtypes)
    if row:
        if not isinstance(value, list):
            raise invalid("'instances' must be a list")
        if len(names) == 1:
            columns = {names[0]: value}
        else:
            if not all(isinstance(v, dict) for v in value):
                raise invalid(f"'instances' must be a list of objects with keys {names}")
            columns = {n: [v.get(n) for v in value] for n in names}
    elif len(names) == 1 and not isinstance(value, dict):
        columns = {names[0]: value}
    else:
        if not isinstance(value, dict):
            raise invalid(f"'inputs' must be an object with keys {names}")
        columns = value
    unknown = set(columns) - set(names)
    if unknown:
        raise invalid(f"input tensor alias not found in signature: {sorted(unknown)[0]}. "
                      f"Inputs expected to be in the set {{{','.join(names)}}}.")
    return {n: json_to_array(v, input_dtypes[n], n) for n, v in columns.items()}, row


def predict_response(outputs: Mapping[str, np.ndarray], row: bool) -> dict[str, Any]:
    """{"predictions": …} for row requests, {"outputs": …} for columnar ones."""
    encoded = {name: array_to_json(array, name) for name, array in outputs.items()}
    if not row:
        return {"outputs": next(iter(encoded.values())) if len(encoded) == 1 else encoded}
    if len(encoded) == 1:
        return {"predictions": next(iter(encoded.values()))}
    count = len(next(iter(outputs.values())))
    return {"predictions": [{name: values[i] for name, values in encoded.items()}
                            for i in range(count)]}


def predict_body(inputs: Mapping[str, np.ndarray], signature_name: str) -> dict[str, Any]:
    """A columnar predict body (columnar keeps several named outputs unambiguous)."""
    columns = {}
    for name, array in inputs.items():
        array = np.asarray(array)
        columns[name] = (np.vectorize(bytes_to_json, otypes=[object])(array).tolist()
                         if array.dtype == object else array.tolist())
    return {"signature_name": signature_name, "inputs": columns}


def outputs_from_response(body: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of a columnar predict response with several named outputs."""
    outputs = body["outputs"]
    return {name: np.array(value) for name, value in outputs.items()}


# --- REST classify -----------------------------------------------------------------------------

def _feature(value: Any) -> tf.train.Feature:
    values = value if isinstance(value, list) else [value]
    decoded = [_decode_json_value(v) for v in values]
    if all(isinstance(v, bytes) for v in decoded):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=decoded))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in decoded):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=decoded))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in decoded):
        return tf.train.Feature(float_list=tf.train.FloatList(value=decoded))
    raise invalid("example feature values must all be strings, integers or numbers")


def examples_from_json(body: Any) -> list[tf.train.Example]:
    """The tf.Examples of a classify body `{"examples": [{feature: value, ...}, ...]}`."""
    if not isinstance(body, dict) or not isinstance(body.get("examples"), list):
        raise invalid("JSON body must be an object with an 'examples' list")
    examples = []
    for item in body["examples"]:
        if not isinstance(item, dict):
            raise invalid("each example must be an object of feature name to value")
        examples.append(tf.train.Example(features=tf.train.Features(
            feature={name: _feature(value) for name, value in item.items()})))
    return examples


def classify_response(classes: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """{"result": [[[label, score], ...], ...]}, one list per example."""
    return {"result": [[[label.decode(), float(score)] for label, score in zip(row_c, row_s)]
                       for row_c, row_s in zip(classes, scores)]}


def example_to_json(example: tf.train.Example) -> dict[str, Any]:
    """A tf.Example of bytes features as a classify-body example."""
    return {name: [bytes_to_json(v) for v in feature.bytes_list.value]
            for name, feature in example.features.feature.items()}


# --- gRPC tensors ------------------------------------------------------------------------------

def to_tensor_proto(array: np.ndarray | Sequence) -> tf.compat.v1.TensorProto:
    return tf.make_tensor_proto(np.asarray(array))


def from_tensor_proto(proto: tf.compat.v1.TensorProto) -> np.ndarray:
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as error:
        raise invalid(f"malformed TensorProto: {error}") from None
