"""catdog.serving.servable: a SavedModel version answers Predict, Classify, Regress and
MultiInference as TF Serving's servables do, on TF Serving's test models and on SavedModels
written by TF2 (the tests each name the TF Serving test they port: H
http_rest_api_handler_test.cc, S tensorflow_model_server_test.py)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from catdog.serving.server import start_server
from catdog.serving.status import ServingError

from tfserving_models import TWO_VERSIONS, rest, verify_predict, verify_spec


@pytest.mark.parametrize("path,body,expected", [
    (":predict", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}', {"predictions": [[2.5, 3.0],
                                                                            [3.5, 4.0]]}),
    ("/versions/123:predict", '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
    ("/labels/Version_Label:predict", '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
    ("/versions/123:predict", '{"signature_name": "serving_default", "instances": [3.0, 4.0]}',
     {"predictions": [3.5, 4.0]}),
    ("/versions/123:predict", '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}',
     {"outputs": [3.5, 4.0]}),
    (":regress", '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }',
     {"results": [42]}),
    ("/versions/123:regress", '{"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}',
     {"results": [42]}),
    ("/labels/Version_Label:regress",
     '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }', {"results": [42]}),
    (":classify", '{"signature_name": "classify_x_to_y", "examples": [ { "x": 20.0 } ] }',
     {"results": [[["", 12]]]}),
    ("/labels/Version_Label:classify",
     '{"signature_name": "classify_x_to_y", "examples": [ { "x": 10.0 } ] }',
     {"results": [[["", 7]]]}),
])
def test_predict_regress_classify_answer_as_tf_serving(tfs_server, path, body, expected):
    """H Predict, Regress, Classify: the exact bodies."""
    assert rest(tfs_server, "POST", f"/v1/models/{TWO_VERSIONS}{path}", body) == (200, expected)


def _example_request(request, signature):
    request.model_spec.name = "default"
    request.model_spec.signature_name = signature
    request.input.example_list.examples.add().features.feature["x"].float_list.value.extend([2.0])
    return request


def test_classify_grpc(tfs_stubs):
    """S testClassify."""
    result = tfs_stubs[0].Classify(_example_request(classification_pb2.ClassificationRequest(),
                                                "classify_x_to_y"), 20)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    verify_spec(result.model_spec, "default", "classify_x_to_y")


def test_regress_grpc(tfs_stubs):
    """S testRegress."""
    result = tfs_stubs[0].Regress(_example_request(regression_pb2.RegressionRequest(),
                                               "regress_x_to_y"), 20)
    assert len(result.result.regressions) == 1 and result.result.regressions[0].value == 3.0
    verify_spec(result.model_spec, "default", "regress_x_to_y")


def test_multi_inference_grpc(tfs_stubs):
    """S testMultiInference."""
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "tensorflow/serving/regress"),
                              ("classify_x_to_y", "tensorflow/serving/classify")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "default", signature
    request.input.example_list.examples.add().features.feature["x"].float_list.value.extend([2.0])
    result = tfs_stubs[0].MultiInference(request, 20)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i in range(2):
        verify_spec(result.results[i].model_spec, "default",
                     request.tasks[i].model_spec.signature_name)


@pytest.mark.parametrize("model_name,expected", [("half_plus_two", 3.0),
                                                 ("half_plus_three", 4.0)])
@pytest.mark.parametrize("specify_output", [True, False])
def test_good_model_config(tfs_stubs, model_name, expected, specify_output):
    """S testGoodModelConfig (and testPredictSavedModel): several models from one config."""
    verify_predict(tfs_stubs[0], model_name, expected, specify_output)


def _serve_one(base: Path):
    return start_server("default", base, port=0, rest_api_port=None, verify_graph_ops=False)


def test_tf_saved_model_save(tmp_path):
    """S test_tf_saved_model_save: a scalar-shaped TF2 function (12 = 3·2·2)."""
    root = tf.train.Checkpoint()
    root.v1, root.v2 = tf.Variable(3.), tf.Variable(2.)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    tf.saved_model.save(root, str(tmp_path / "00000123"),
                        root.f.get_concrete_function(tf.TensorSpec(None, tf.float32)))
    server = _serve_one(tmp_path)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        verify_predict(prediction_service_pb2_grpc.PredictionServiceStub(channel), "default",
                        12.0, specify_output=False)
    finally:
        server.stop()


def test_tf_saved_model_save_multiple_signatures(tmp_path):
    """S test_tf_saved_model_save_multiple_signatures."""
    root = tf.train.Checkpoint()
    root.f = tf.function(lambda x: {"y": 1.}, input_signature=[tf.TensorSpec(None, tf.float32)])
    root.g = tf.function(lambda x: {"y": 2.}, input_signature=[tf.TensorSpec(None, tf.float32)])
    tf.saved_model.save(root, str(tmp_path / "00000123"),
                        signatures={"serving_default": root.f, "custom_signature_key": root.g})
    server = _serve_one(tmp_path)
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
        verify_predict(stub, "default", 2.0, signature_name="custom_signature_key")
        verify_predict(stub, "default", 1.0)
    finally:
        server.stop()


@pytest.mark.parametrize("call, request_class", [
    ("Classify", classification_pb2.ClassificationRequest),
    ("Regress", regression_pb2.RegressionRequest)])
def test_an_unknown_signature_is_invalid_argument_for_classify_and_regress(tfs_stubs, call,
                                                                          request_class):
    """InvalidSignature (classification_service_test.cc, regression_service_test.cc):
    GetClassificationSignatureDef / GetRegressionSignatureDef's INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as error:
        getattr(tfs_stubs[0], call)(_example_request(request_class(), "nope"), 20)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "No signature was found with the name: nope"


def test_a_multi_inference_task_on_a_predict_signature_is_unimplemented(tfs_stubs):
    """UsupportedSignatureTypeTest (multi_inference_test.cc)."""
    request = inference_pb2.MultiInferenceRequest()
    task = request.tasks.add(method_name="tensorflow/serving/predict")
    task.model_spec.name, task.model_spec.signature_name = "default", "serving_default"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.extend([2.0])
    with pytest.raises(grpc.RpcError) as error:
        tfs_stubs[0].MultiInference(request, 20)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "Unsupported signature method_name" in error.value.details()


def test_the_method_name_check_refuses_a_signature_of_another_method(tfs_models):
    """--enable_signature_method_name_check: Classify on a regress signature is refused in
    PreProcessClassification's words; off (the default), it runs."""
    from catdog.serving.servable import Servable
    from catdog.serving.server_core import version_folders

    version = version_folders(tfs_models / "half_plus_two")[123]
    checked = Servable("default", 123, version, method_name_check=True)
    unchecked = Servable("default", 123, version)
    try:
        request = _example_request(classification_pb2.ClassificationRequest(), "regress_x_to_y")
        with pytest.raises(ServingError, match="Expected classification signature method_name "
                                               "to be tensorflow/serving/classify. Was: "
                                               "tensorflow/serving/regress"):
            checked.classify("regress_x_to_y", request.input)
        assert unchecked.signature("regress_x_to_y").method_name == "tensorflow/serving/regress"
    finally:
        checked.close()
        unchecked.close()
