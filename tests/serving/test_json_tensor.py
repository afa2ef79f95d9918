"""catdog.serving.json_tensor (and tensors) against TF Serving's util/json_tensor_test.cc (test
names in each docstring).

Expected tensors and JSON are the ones written in TF Serving's tests; JSON is compared after
parsing, as rapidjson's CompareJson does, and "as strings" where TF Serving compares number text.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import classification_pb2, regression_pb2

from catdog.serving import json_tensor, tensors
from catdog.serving.status import ServingError

INT32, FLOAT, DOUBLE, STRING = (types_pb2.DT_INT32, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE,
                                types_pb2.DT_STRING)


def proto(text: str) -> tensor_pb2.TensorProto:
    return text_format.Parse(text, tensor_pb2.TensorProto())


def fill(body: str, dtypes: dict):
    return json_tensor.predict_inputs_from_json(json_tensor.parse_json(body), dtypes)


def error_of(call, *args) -> str:
    with pytest.raises(ServingError) as error:
        call(*args)
    assert error.value.code.name == "INVALID_ARGUMENT"
    return error.value.message


# --- FillPredictRequestFromJson ------------------------------------------------------------------

def test_single_unnamed_tensor():
    """SingleUnnamedTensor, TensorFromNonNullTerminatedBuffer (text after the document)."""
    for body in ('{"instances": [[1,2],[3,4],[5,6]]}', '{"instances": [[1,2],[3,4],[5,6]]}X'):
        tensors, row = fill(body, {"default": INT32})
        assert row and tensors["default"] == proto(
            "dtype: DT_INT32 tensor_shape { dim { size: 3 } dim { size: 2 } } "
            "int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6")


def test_deep_nesting_is_refused_with_a_clean_400_and_tensor_nesting_is_read():
    """DeeplyNestedWellFormed and DeeplyNestedMalformed (500,000 levels): rapidjson parses them;
    Python's json refuses them, here as one INVALID_ARGUMENT line (docs/serving.md,
    Differences). A rank-6 tensor, deeper than any image batch, still parses."""
    nested = "[" * 100000 + "]" * 100000
    for body in ('{"instances":[1], "nested":' + nested + "}", '{"signature_name":' + nested + "}"):
        with pytest.raises(ServingError) as error:
            json_tensor.parse_json(body)
        assert error.value.code.name == "INVALID_ARGUMENT"
        assert error.value.message == "JSON Parse error: the document is nested too deeply"
    tensors, _ = fill('{"instances": [[[[[[1]]]]]]}', {"default": INT32})
    assert [d.size for d in tensors["default"].tensor_shape.dim] == [1] * 6


def test_mixed_numbers_for_float_and_double():
    """MixedInputForFloatTensor, MixedInputForDoubleTensor."""
    tensors, _ = fill('{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}', {"default": FLOAT})
    assert tensors["default"] == proto(
        "dtype: DT_FLOAT tensor_shape { dim { size: 7 } } float_val: 1 float_val: 2.0 "
        "float_val: 3 float_val: 4 float_val: 5.003 float_val: 0.007 float_val: 0.0")
    tensors, _ = fill('{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}', {"default": DOUBLE})
    assert list(tensors["default"].double_val) == [1, 2, 3, 4, 0.662, 0, 0]


def test_float_precision_loss_overflow_and_underflow():
    """FloatTensorWithPrecisionLoss, FloatTensorThatExceedsMaxReturnsInf, ...MinReturnsZero."""
    for text in ("1435774380", "1435774380.0"):
        assert fill('{"instances": [%s]}' % text, {"d": FLOAT})[0]["d"].float_val[0] == \
            np.float32(1435774380)
    big, tiny = float(np.finfo(np.float64).max), float(np.finfo(np.float64).tiny)
    assert fill('{"instances": [%r]}' % big, {"d": FLOAT})[0]["d"].float_val[0] == math.inf
    assert fill('{"instances": [%r]}' % -big, {"d": FLOAT})[0]["d"].float_val[0] == -math.inf
    assert fill('{"instances": [%r]}' % tiny, {"d": FLOAT})[0]["d"].float_val[0] == 0.0


def test_signature_name_and_base64():
    """SingleUnnamedTensorWithSignature, SingleUnnamedTensorBase64Scalars/Lists,
    SingleNamedTensorBase64."""
    document = json_tensor.parse_json('{"signature_name": "predict_images", "instances": [[1,2]]}')
    assert json_tensor.signature_name_of(document) == "predict_images"
    hello, world = '{ "b64" : "aGVsbG8=" }', '{ "b64": "d29ybGQ=" }'
    scalars = fill('{"instances": [%s, %s]}' % (hello, world), {"default": STRING})[0]
    assert scalars["default"] == proto('dtype: DT_STRING tensor_shape { dim { size: 2 } } '
                                       'string_val: "hello" string_val: "world"')
    lists = fill('{"instances": [[%s], [%s]]}' % (hello, world), {"default": STRING})[0]
    assert [d.size for d in lists["default"].tensor_shape.dim] == [2, 1]
    named = fill('{"instances": [{"default": [[%s], [%s]]}]}' % (hello, world),
                 {"default": STRING})[0]
    assert [d.size for d in named["default"].tensor_shape.dim] == [1, 2, 1]
    assert list(named["default"].string_val) == [b"hello", b"world"]


def test_multiple_named_tensors_row_format():
    """MultipleNamedTensor (NaN and Infinity accepted)."""
    tensors, row = fill('''{"instances": [
        {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"],
         "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
        {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],
         "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]}''',
                        {"int_tensor": INT32, "str_tensor": STRING, "float_tensor": FLOAT,
                         "dbl_tensor": DOUBLE})
    assert row
    assert [d.size for d in tensors["int_tensor"].tensor_shape.dim] == [2, 3, 2]
    assert list(tensors["int_tensor"].int_val) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert list(tensors["str_tensor"].string_val) == [b"foo", b"bar", b"baz", b"bat"]
    floats = list(tensors["float_tensor"].float_val)
    assert floats[0] == 1 and math.isnan(floats[1]) and floats[2:] == [2, math.inf]
    assert [d.size for d in tensors["dbl_tensor"].tensor_shape.dim] == [2, 1]


def test_columnar_format():
    """SingleUnnamedTensorColumnarFormat, MultipleNamedTensorColumnarFormat."""
    for body in ('{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}',
                 '{"inputs": [[[1,2],[3,4],[5,6]]]}'):
        tensors, row = fill(body, {"int_tensor": INT32})
        assert not row and [d.size for d in tensors["int_tensor"].tensor_shape.dim] == [1, 3, 2]
    tensors, _ = fill('{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]], "str_tensor": '
                      '["foo", "bar"], "bin_tensor": { "b64" : "aGVsbG8=" }}}',
                      {"int_tensor": INT32, "str_tensor": STRING, "bin_tensor": STRING})
    assert tensors["bin_tensor"] == proto('dtype: DT_STRING tensor_shape {} string_val: "hello"')


@pytest.mark.parametrize("body,dtypes,message", [
    ('{"signature_name": 5, "instances": [[1,2],[3,4],[5,6,7]]}', {"default": INT32},
     "must be a string value"),
    ('{"instances": [[1,2],[3,4],[5,6,7]], "inputs": [[1,2],[3,4],[5,6,7]]}',
     {"default": INT32}, "Not formatted correctly"),
    ('{"instances": [[1,2],[3,4],[5,6,7]]}', {"default": INT32}, "Expecting tensor size"),
    ('{"instances": [[1,2],[3,4],[[5,6]]]}', {"default": INT32}, "Expecting shape"),
    ('{"instances": [1, [1]]}', {"default": INT32}, "Expecting shape"),
    ('{"instances": [[1,2],["a", "b"]]}', {"default": INT32}, "not of expected type"),
    ('{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]}, '
     '{"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}',
     {"int_tensor": INT32, "str_tensor": STRING}, "Expecting shape"),
    ('{"instances": [{"int_tensor": [[1,2],[3,4],[5,6],[7,8]], "str_tensor": ["foo", "bar"]}, '
     '{"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]}',
     {"int_tensor": INT32, "str_tensor": STRING}, "Expecting tensor size"),
    ('{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]}, '
     '[1, 20, 30], {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}',
     {"int_tensor": INT32, "str_tensor": STRING}, "Expecting object but got list"),
    ('{"instances": [["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}', {"str_tensor": STRING},
     "Expecting value/list but got object"),
])
def test_request_errors(body, dtypes, message):
    """SingleUnnamedTensorErrors, MultipleNamedTensorErrors."""
    def run():
        document = json_tensor.parse_json(body)
        json_tensor.signature_name_of(document)
        json_tensor.predict_inputs_from_json(document, dtypes)

    assert message in error_of(run)


def test_empty_document():
    """SingleUnnamedTensorErrors: "document is empty"."""
    assert "document is empty" in error_of(json_tensor.parse_json, "")


# --- MakeJsonFromTensors -------------------------------------------------------------------------

def outputs(**texts) -> dict:
    return {name: tensors.array_from_proto(proto(text)) for name, text in texts.items()}


INT_2x3x2 = ("dtype: DT_INT32 tensor_shape { dim { size: 2 } dim { size: 3 } dim { size: 2 } } "
             + " ".join(f"int_val: {v}" for v in (1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2)))


def test_json_from_single_tensor():
    """FromJsonSingleTensor, FromJsonSingleScalarTensor, FromJsonSingleBytesTensor."""
    nested = [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]
    tensor = outputs(int_tensor=INT_2x3x2)
    assert json.loads(json_tensor.json_from_outputs(tensor, True)) == {"predictions": nested}
    assert json.loads(json_tensor.json_from_outputs(tensor, False)) == {"outputs": nested}
    five = outputs(int_tensor="dtype: DT_INT32 tensor_shape { dim { size: 5 } } " +
                   " ".join(f"int_val: {v}" for v in range(1, 6)))
    assert json.loads(json_tensor.json_from_outputs(five, True)) == {"predictions": [1, 2, 3, 4, 5]}
    strings = outputs(str_tensor_bytes='dtype: DT_STRING tensor_shape { dim { size: 2 } '
                      'dim { size: 2 } } string_val: "hello" string_val: "world" '
                      'string_val: "tf" string_val: "serving"')
    assert json.loads(json_tensor.json_from_outputs(strings, True)) == {"predictions": [
        [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}], [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]}


def test_json_floats_have_six_digits_and_non_finite_names():
    """FromJsonSingleFloatTensorSixDigitPrecision, FromJsonSingleFloatTensorNonFinite
    (compared as strings, as CompareJsonAllValuesAsStrings does)."""
    six = outputs(float_tensor="dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 3 } } "
                  "float_val: 9000000 float_val: 999999 float_val: 0.50000 float_val: .0003 "
                  "float_val: .00003 float_val: 555557.5")
    text = json_tensor.json_from_outputs(six, True).replace(" ", "")
    assert text == '{"predictions":[[9e+06,999999.0,0.5],[0.0003,3e-05,555557.5]]}'
    odd = outputs(float_tensor="dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 2 } } "
                  "float_val: NaN float_val: Infinity float_val: 3 float_val: -Infinity")
    assert json_tensor.json_from_outputs(odd, True).replace(" ", "") == \
        '{"predictions":[[NaN,Infinity],[3.0,-Infinity]]}'


def test_json_from_multiple_named_tensors():
    """FromJsonMultipleNamedTensors (row and columnar)."""
    tensors = outputs(
        int_tensor=INT_2x3x2,
        str_tensor='dtype: DT_STRING tensor_shape { dim { size: 2 } dim { size: 2 } } '
                   'string_val: "foo" string_val: "bar" string_val: "baz" string_val: "bat"',
        float_tensor="dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 1 } } "
                     "float_val: 1.0 float_val: 2.0",
        double_scalar_tensor="dtype: DT_DOUBLE tensor_shape { dim { size: 2 } } "
                             "double_val: 8.0 double_val: 9.0")
    assert json.loads(json_tensor.json_from_outputs(tensors, True)) == {"predictions": [
        {"double_scalar_tensor": 8.0, "float_tensor": [1.0], "int_tensor": [[1, 2], [3, 4], [5, 6]],
         "str_tensor": ["foo", "bar"]},
        {"double_scalar_tensor": 9.0, "float_tensor": [2.0], "int_tensor": [[7, 8], [9, 0], [1, 2]],
         "str_tensor": ["baz", "bat"]}]}
    assert json.loads(json_tensor.json_from_outputs(tensors, False)) == {"outputs": {
        "double_scalar_tensor": [8.0, 9.0], "float_tensor": [[1.0], [2.0]],
        "int_tensor": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]],
        "str_tensor": [["foo", "bar"], ["baz", "bat"]]}}


def test_json_from_tensors_errors_and_zero_batches():
    """FromJsonSingleTensorErrors, FromJsonMultipleNamedTensorsErrors, FromJsonSingleZeroBatch,
    FromJsonMultipleZeroBatchTensors(Errors)."""
    assert "empty tensor map" in error_of(json_tensor.json_from_outputs, {}, True)
    assert "no shape information" in error_of(
        json_tensor.json_from_outputs, outputs(tensor="dtype: DT_INT32 int_val: 1"), True)
    assert "inconsistent batch size" in error_of(json_tensor.json_from_outputs, outputs(
        int_tensor="dtype: DT_INT32 tensor_shape { dim { size: 2 } dim { size: 3 } }",
        str_tensor="dtype: DT_STRING tensor_shape { dim { size: 1 } dim { size: 3 } }"), True)
    zero = outputs(str_tensor="dtype: DT_STRING tensor_shape { dim { size: 0 } dim { size: 1 } }",
                   float_tensor="dtype: DT_FLOAT tensor_shape { dim { size: 0 } dim { size: 3 } }")
    assert json.loads(json_tensor.json_from_outputs(zero, True)) == {"predictions": []}


# --- classify and regress ------------------------------------------------------------------------

def test_classify_regress_request_with_context_and_signature():
    """RequestNoContext, RequestWithContextAndSignature."""
    document = json_tensor.parse_json('''{"signature_name": "custom_signture",
        "context": {"query": "pizza", "location": [ "sfo" ]},
        "examples": [{"names": ["foo", "bar"], "ratings": [8.0, 9.0, NaN, Infinity], "age": 20},
                     {"names": ["baz", {"b64": "aGVsbG8="}], "ratings": 6.0,
                      "intboolmix": [1, true, false]},
                     {"names": "bar", "ratings": -Infinity}]}''')
    assert json_tensor.signature_name_of(document) == "custom_signture"
    request = json_tensor.input_from_json(document)
    context = request.example_list_with_context.context.features.feature
    assert list(context["query"].bytes_list.value) == [b"pizza"]
    first, second, third = request.example_list_with_context.examples
    assert list(first.features.feature["age"].int64_list.value) == [20]
    assert list(second.features.feature["names"].bytes_list.value) == [b"baz", b"hello"]
    assert list(second.features.feature["intboolmix"].int64_list.value) == [1, 1, 0]
    assert list(third.features.feature["ratings"].float_list.value) == [-math.inf]
    plain = json_tensor.input_from_json(
        json_tensor.parse_json('{"examples": [{"names": ["foo"]}]}'))
    assert plain.WhichOneof("kind") == "example_list"


@pytest.mark.parametrize("body,message", [
    ('{"context": [ { "names": [ "foo", "bar" ] } ]}', "Example must be JSON object"),
    ('{"examples": { "names": [ "foo", "bar" ] }}', "list/array"),
    ('{"examples": [ [ { "names": [ "foo", "bar" ] } ] ]}', "Example must be JSON object"),
    ('{"examples": [ { "names": [ 10, null ] } ]}',
     "names has element with unexpected JSON type: Null"),
    ('{"examples": [ { "names": [ 10, 10.0 ] } ]}', "feature: names expecting type: int64"),
    ('{"examples": [ { "names": [ 10, { "test": 10 } ] } ]}',
     "names has element with unexpected JSON type: Object"),
    ('{"examples": [ { "names": [ [10], 20 ] } ]}',
     "names has element with unexpected JSON type: Array"),
    ('{"examples": [ { "names": [ 20, 18446744073709551603 ] } ]}', "Only int64_t is supported"),
])
def test_classify_regress_json_errors(body, message):
    """ClassifyRegressRequestTest JsonErrors."""
    assert message in error_of(json_tensor.input_from_json, json_tensor.parse_json(body))


def test_classification_and_regression_results():
    """JsonFromClassificationResult, JsonFromRegressionResult(WithNonFinite),
    JsonFromResultErrors."""
    result = text_format.Parse(
        'classifications { classes { label: "car" score: 0.2 } '
        'classes { label: "bike" score: 0.7 }'
        ' classes { label: "bus" score: 0.1 } } classifications { '
        'classes { label: "car" score: 0.7 }'
        ' classes { label: "bike" score: 0.1 } classes { label: "bus" score: 0.2 } }',
        classification_pb2.ClassificationResult())
    assert json.loads(json_tensor.json_from_classification_result(result)) == {"results": [
        [["car", 0.2], ["bike", 0.7], ["bus", 0.1]], [["car", 0.7], ["bike", 0.1], ["bus", 0.2]]]}
    regression = text_format.Parse(
        "regressions { value: 0.2 } regressions { value: Infinity } regressions { value: 1.0 } "
        "regressions { value: -Infinity } regressions { value: NaN }",
        regression_pb2.RegressionResult())
    assert json_tensor.json_from_regression_result(regression).replace(" ", "") == \
        '{"results":[0.2,Infinity,1.0,-Infinity,NaN]}'
    assert "empty ClassificationResults" in error_of(
        json_tensor.json_from_classification_result, classification_pb2.ClassificationResult())
    assert "empty RegressionResults" in error_of(
        json_tensor.json_from_regression_result, regression_pb2.RegressionResult())


def test_error_body_keeps_quotes():
    """MakeJsonFromTensors StatusError."""
    for message in ('Bad key: "key"', "Bad key: 'key'"):
        assert json.loads(json_tensor.json_error(message)) == {"error": message}


# --- gRPC tensors: typed fields as TF Serving's responses carry them ----------------------------

def test_tensor_proto_uses_typed_fields():
    """predict_util.cc kAsProtoField: what TF Serving's example clients read (.float_val)."""
    floats = tensors.tensor_proto(np.array([[0.25, 0.75]], np.float32))
    assert list(floats.float_val) == [0.25, 0.75] and not floats.tensor_content
    assert list(tensors.tensor_proto(np.array([1, 0], np.int64)).int64_val) == [1, 0]
    assert list(tensors.tensor_proto(np.array([b"cats"], object)).string_val) == [b"cats"]
    assert tensors.array_from_proto(floats).tolist() == [[0.25, 0.75]]


def test_declared_shapes_are_checked_before_allocation():
    too_many = proto("dtype: DT_FLOAT tensor_shape { dim { size: 1 } } float_val: 1 float_val: 2")
    assert "tensor parsing error" in error_of(tensors.array_from_proto, too_many)
    huge = proto("dtype: DT_FLOAT tensor_shape { dim { size: 20000 } dim { size: 32 } "
                 "dim { size: 32 } dim { size: 3 } }")
    with pytest.raises(ServingError, match="RESOURCE_EXHAUSTED"):
        tensors.array_from_proto(huge, max_bytes=64 << 20)
    assert "cannot be sent" in error_of(tensors.array_from_proto,
                                        proto("dtype: DT_RESOURCE tensor_shape {}"))


def test_a_half_value_is_400_in_row_format_and_501_in_columnar():
    """AddInstanceItem's errors are wrapped as INVALID_ARGUMENT in row format
    (FillTensorMapFromInstancesList); columnar keeps AddValueToTensor's UNIMPLEMENTED."""
    half = {"x": types_pb2.DT_HALF}
    with pytest.raises(ServingError) as row:
        fill('{"instances": [1.5]}', half)
    assert row.value.code.name == "INVALID_ARGUMENT"
    assert "Failed to process element: 0 of 'instances' list" in row.value.message
    with pytest.raises(ServingError) as columnar:
        fill('{"inputs": [1.5]}', half)
    assert columnar.value.code.name == "UNIMPLEMENTED"
