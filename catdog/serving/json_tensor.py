"""TF Serving's REST JSON rules, server side (util/json_tensor.cc, model_servers/http_server.cc).

Every rule here is TF Serving's own, including its error messages, so a client written against one
server works against the other:

- predict bodies hold an optional `signature_name` and either row `instances` or columnar `inputs`;
  a JSON value is checked against the signature input's dtype only (shapes are left to the graph);
  binary strings travel as `{"b64": "..."}`, and a DT_STRING output whose alias ends in `_bytes` is
  written back that way. Floats are written with six significant digits unless that does not
  round-trip. Classify and regress answer `{"results": ...}`; errors `{"error": "..."}`.
- JSON is read by Python's json module; like rapidjson, it accepts NaN and ±Infinity and ignores
  anything after the first complete document. A body nested deeper than Python's recursion limit
  (no realistic tensor comes close: an image batch nests four deep) is refused with 400, where
  rapidjson's iterative parser would go on.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from catdog.contract import BYTES_SUFFIX
from catdog.serving.status import ServingError, invalid
from catdog.serving.tensors import TensorProto, dtype_name, typed_proto

# --- JSON text -----------------------------------------------------------------------------------

_PY_TO_RAPIDJSON_ERROR = (
    ("Expecting property name", "Missing a name for object member."),
    ("Expecting ':'", "Missing a colon after a name of object member."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Invalid control character", "Invalid encoding in string."),
    ("Expecting ','", "Missing a comma or ']' after an array element."),
)


def parse_json(body: bytes | str) -> Any:
    """A JSON document as TF Serving's rapidjson reads it: NaN/Infinity allowed, text after the
    first document ignored; errors are INVALID_ARGUMENT."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError as error:
        raise invalid(f"JSON Parse error: Invalid encoding in string. at offset: "
                      f"{error.start}") from None
    if not text.strip():
        raise invalid("JSON Parse error: The document is empty")
    start = len(text) - len(text.lstrip())
    try:
        return json.JSONDecoder().raw_decode(text, start)[0]
    except RecursionError:
        raise invalid("JSON Parse error: the document is nested too deeply") from None
    except json.JSONDecodeError as error:
        reason = next((ours for theirs, ours in _PY_TO_RAPIDJSON_ERROR
                       if error.msg.startswith(theirs)), "Invalid value.")
        raise invalid(f"JSON Parse error: {reason} at offset: {error.pos}") from None


class _Raw(str):
    """Text written into JSON as it is (a number formatted the way TF Serving formats it)."""


def dumps(value: Any) -> str:
    """JSON text of plain values, lists, dicts and `_Raw` numbers."""
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


def json_error(message: str) -> str:
    """TF Serving's error body (util/json_tensor.cc, MakeJsonFromStatus)."""
    return json.dumps({"error": message})


def _decimal(value: float, single: bool) -> _Raw:
    """WriteDecimal: six significant digits unless that does not round-trip, '.0' on whole
    numbers, NaN and ±Infinity as rapidjson writes them."""
    if math.isnan(value):
        return _Raw("NaN")
    if math.isinf(value):
        return _Raw("-Infinity" if value < 0 else "Infinity")
    text = "%.6g" % value
    parse = np.float32 if single else float
    if parse(text) != parse(value):
        text = "%.*g" % (9 if single else 17, value)
    if "." not in text and "e" not in text:
        text += ".0"
    return _Raw(text)


def _debug(value: Any, limit: int = 200) -> str:
    """A bounded rendering of a JSON value for error messages (JsonValueToDebugString)."""
    try:
        text = json.dumps(value)
    except (RecursionError, ValueError):
        text = "<a deeply nested value>"
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


# --- REST predict: JSON → request tensors ---------------------------------------------------------

_INT_RANGES = {
    types_pb2.DT_INT32: (-(1 << 31), 1 << 31), types_pb2.DT_INT16: (-(1 << 31), 1 << 31),
    types_pb2.DT_INT8: (-(1 << 31), 1 << 31), types_pb2.DT_UINT8: (-(1 << 31), 1 << 31),
    types_pb2.DT_INT64: (-(1 << 63), 1 << 63), types_pb2.DT_UINT32: (0, 1 << 32),
    types_pb2.DT_UINT64: (0, 1 << 64),
}


def is_b64(value: Any) -> bool:
    """Whether a JSON value is a {"b64": ...} binary string."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def b64_json(data: bytes) -> dict[str, str]:
    """Binary data as REST JSON writes it: {"b64": standard base64}."""
    return {"b64": base64.b64encode(data).decode()}


def _b64decode(value: Any) -> bytes:
    if not is_b64(value):
        raise invalid(f"JSON Value: {_debug(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _tensor_value(value: Any, dtype: int) -> Any:
    """AddValueToTensor: one JSON leaf as a value of `dtype`, or TF Serving's type error."""
    def type_error():
        return invalid(f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of "
                       f"expected type: {dtype_name(dtype)}")

    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        if not is_number:
            raise type_error()
        return float(value)
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if not (is_number and isinstance(value, int) and low <= value < high):
            raise type_error()
        return value
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, dict):
            return _b64decode(value)
        if not isinstance(value, str):
            raise type_error()
        return value.encode()
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise type_error()
        return value
    raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON Value: "
                       f"{_debug(value)} to type: {dtype_name(dtype)}")


def _dense_shape(value: Any) -> list[int]:
    """GetDenseTensorShape: the shape read down the first elements."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _leaves(value: Any, shape: Sequence[int], dtype: int) -> list:
    """FillTensorProto: the leaves of a dense nested list in order, every list the size its
    level declares and every leaf at the last level."""
    rank = len(shape)
    out: list = []
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if not isinstance(item, list):
            if level != rank:
                raise invalid(f"JSON Value: {_debug(item)} found at incorrect level: "
                              f"{level + 1} in the JSON DOM. Expected at level: {rank}")
            out.append(_tensor_value(item, dtype))
            continue
        if level >= rank:
            raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(item) != shape[level]:
            raise invalid(f"Encountered list at unexpected size: {len(item)} at level: "
                          f"{level} expected size: {shape[level]}")
        stack.extend((v, level + 1) for v in reversed(item))
    return out


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(n) for n in shape) + "]"


def signature_name_of(document: Any) -> str:
    """The request's optional `signature_name` (FillSignature); '' when absent."""
    if not isinstance(document, dict):
        raise invalid(f"JSON Value: {_debug(document)} Is not object")
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(f"JSON Value: {_debug(document)} not formatted correctly. "
                      "'signature_name' key must be a string value.")
    return name


def _instances(items: list, dtypes: Mapping[str, int]) -> dict[str, TensorProto]:
    """FillTensorMapFromInstancesList: row format, batched along a new first dimension."""
    if not isinstance(items[0], dict) and len(dtypes) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple "
                      "input tensors required as per tensorinfo_map")
    named = isinstance(items[0], dict) and not is_b64(items[0])
    shapes: dict[str, list[int]] = {}
    values: dict[str, list] = {name: [] for name in dtypes}
    for index, item in enumerate(items):
        if named != (isinstance(item, dict) and not is_b64(item)):
            expected = "object but got list" if named else "value/list but got object"
            raise invalid(f"Expecting {expected} at item {index} of input list")
        pairs = item.items() if named else [(next(iter(dtypes)), item)]
        for name, value in pairs:
            try:
                if name not in dtypes:
                    raise invalid(f"JSON object: does not have named input: {name}")
                shape = _dense_shape(value)
                leaves = _leaves(value, shape, dtypes[name])
                if name in shapes and math.prod(shapes[name]) != len(leaves):
                    raise invalid(f"Expecting tensor size: {math.prod(shapes[name])} but got: "
                                  f"{len(leaves)}")
                if name in shapes and shapes[name] != shape:
                    raise invalid(f"Expecting shape {_shape_text(shapes[name])} but got: "
                                  f"{_shape_text(shape)}")
            except ServingError as error:
                key = f" key: {name}" if named else ""
                # TF Serving wraps every element error as INVALID_ARGUMENT (a DT_HALF value,
                # UNIMPLEMENTED in columnar format, is 400 here)
                raise invalid(f"Failed to process element: {index}{key} of 'instances' list. "
                              f"Error: {error}") from None
            shapes[name] = shape
            values[name].extend(leaves)
        if named and set(item) != set(dtypes):
            raise invalid(f"Failed to process element: {index} of 'instances' list. JSON "
                          f"object: {_debug(item)} keys must be equal to: "
                          f"{','.join(sorted(dtypes))}")
    return {name: typed_proto(dtypes[name], [len(items), *shapes[name]], values[name])
            for name in shapes}


def _columns(value: Any, dtypes: Mapping[str, int]) -> dict[str, TensorProto]:
    """FillTensorMapFromInputsMap: columnar format, each input given whole."""
    if not isinstance(value, dict) or is_b64(value):
        if len(dtypes) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple "
                          "input tensors required as per tensorinfo_map")
        columns = {next(iter(dtypes)): value}
    else:
        missing = [name for name in dtypes if name not in value]
        if missing:
            raise invalid(f"Missing named input: {missing[0]} in 'inputs' object.")
        columns = {name: value[name] for name in dtypes}
    tensors = {}
    for name, column in columns.items():
        shape = _dense_shape(column)
        tensors[name] = typed_proto(dtypes[name], shape, _leaves(column, shape, dtypes[name]))
    return tensors


def predict_inputs_from_json(document: dict, dtypes: Mapping[str, int]
                             ) -> tuple[dict[str, TensorProto], bool]:
    """FillPredictRequestFromJson: the request tensors of a predict body for a signature whose
    inputs have `dtypes` (alias → DataType), and whether the body was row format."""
    if not dtypes:
        raise invalid(f"Failed to get input map for signature: "
                      f"{document.get('signature_name') or 'DEFAULT'}")
    if "instances" in document and "inputs" in document:
        raise invalid(f"JSON Value: {_debug(document)} Not formatted correctly expecting only "
                      "one of 'inputs' or 'instances' keys to exist ")
    if "instances" in document:
        items = document["instances"]
        if not isinstance(items, list):
            raise invalid(f"JSON Value: {_debug(document)} Expecting 'instances' to be an "
                          "list/array")
        if not items:
            raise invalid(f"JSON Value: {_debug(document)} No values in 'instances' array")
        return _instances(items, dtypes), True
    if "inputs" in document:
        return _columns(document["inputs"], dtypes), False
    raise invalid("Missing 'inputs' or 'instances' key")


# --- REST predict: response tensors → JSON --------------------------------------------------------

def _json_values(array: np.ndarray, alias: str) -> Any:
    """AddTensorValues: nested lists of JSON values for one tensor (or one batch item)."""
    kind = array.dtype.kind
    if array.dtype == object or kind in "SU":
        as_bytes = alias.endswith(BYTES_SUFFIX)

        def leaf(v):
            data = v if isinstance(v, bytes) else str(v).encode()
            return (b64_json(data) if as_bytes
                    else data.decode("utf-8", "replace"))
    elif kind == "f" and array.dtype.itemsize in (4, 8):
        single = array.dtype.itemsize == 4

        def leaf(v):
            return _decimal(float(v), single)
    elif kind in "iub":
        leaf = (bool if kind == "b" else int)
    else:
        raise invalid(f"Failed to write JSON value for tensor type: {array.dtype.name}")
    flat = [leaf(v) for v in array.reshape(-1).tolist()] if array.dtype != object else \
        [leaf(v) for v in array.reshape(-1)]
    for size in reversed(array.shape[1:] if array.ndim else ()):
        flat = [flat[i:i + size] for i in range(0, len(flat), size)]
    return flat if array.ndim else flat[0]


def json_from_outputs(outputs: Mapping[str, np.ndarray], row: bool) -> str:
    """MakeJsonFromTensors: {"predictions": ...} for row requests, {"outputs": ...} for
    columnar ones; one output is written bare, several as objects keyed by alias."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if not row:
        columns = {n: _json_values(np.asarray(outputs[n]), n) for n in names}
        return dumps({"outputs": columns if len(names) > 1 else columns[names[0]]})
    batch = None
    for name in names:
        array = np.asarray(outputs[name])
        if array.ndim == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch is not None and array.shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                          f"expecting: {batch}")
        batch = array.shape[0]
    arrays = {n: np.asarray(outputs[n]) for n in names}
    per_output = {n: [_json_values(np.asarray(item, a.dtype), n) for item in a]
                  for n, a in arrays.items()}
    if len(names) == 1:
        return dumps({"predictions": per_output[names[0]]})
    return dumps({"predictions": [{n: per_output[n][i] for n in names} for i in range(batch)]})


# --- REST classify and regress -------------------------------------------------------------------

def _add_feature_value(feature: feature_pb2.Feature, name: str, value: Any) -> None:
    """AddValueToFeature: the first value fixes the feature's kind; the rest must agree."""
    def incompatible():
        kind = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}.get(
            feature.WhichOneof("kind"), "UNKNOWN")
        return invalid(f"Unexpected element type in feature: {name} expecting type: {kind}")

    def add(kind, item):
        if feature.WhichOneof("kind") not in (None, kind):
            raise incompatible()
        getattr(feature, kind).value.append(item)

    if value is None or isinstance(value, list) or (isinstance(value, dict) and
                                                    not is_b64(value)):
        raise invalid(f"Feature: {name} has element with unexpected JSON type: "
                      f"{_json_type(value)}")
    if isinstance(value, bool):
        add("int64_list", int(value))
    elif isinstance(value, dict):
        add("bytes_list", _b64decode(value))
    elif isinstance(value, str):
        add("bytes_list", value.encode())
    elif isinstance(value, float):
        add("float_list", value)
    elif not -(1 << 63) <= value < (1 << 63):
        raise invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    else:
        add("int64_list", value)


def example_from_json(value: Any, example: example_pb2.Example) -> None:
    """MakeExampleFromJsonObject: {feature: value or [values]} into a tf.Example."""
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(feature, name, item)


def input_from_json(document: dict) -> input_pb2.Input:
    """FillClassifyRegressRequestFromJson: `examples` (and an optional `context`) as an Input."""
    result = input_pb2.Input()
    has_context = "context" in document
    if has_context:
        example_from_json(document["context"], result.example_list_with_context.context)
    examples = document.get("examples")
    if "examples" not in document:
        raise invalid(f"JSON Value: {_debug(document)} When method is classify, key "
                      "'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {_debug(document)} Expecting 'examples' value to be an "
                      "list/array")
    if not examples:
        raise invalid(f"JSON Value: {_debug(document)} 'examples' value is an empty array")
    target = (result.example_list_with_context.examples if has_context
              else result.example_list.examples)
    for item in examples:
        example_from_json(item, target.add())
    return result


def json_from_classification_result(result: classification_pb2.ClassificationResult) -> str:
    """{"results": [[[label, score], ...], ...]}, one list per example."""
    if not result.classifications:
        raise invalid("Cannot convert empty ClassificationResults to JSON")
    return dumps({"results": [[[c.label, _decimal(c.score, True)] for c in item.classes]
                              for item in result.classifications]})


def json_from_regression_result(result: regression_pb2.RegressionResult) -> str:
    """{"results": [value, ...]}, one value per example."""
    if not result.regressions:
        raise invalid("Cannot convert empty RegressionResults to JSON")
    return dumps({"results": [_decimal(r.value, True) for r in result.regressions]})


