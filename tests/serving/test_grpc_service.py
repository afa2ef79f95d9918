"""catdog.serving.grpc_service: TF Serving's gRPC services, held to what TF Serving does.

- S model_servers/tensorflow_model_server_test.py (GetModelStatus, GetModelMetadata) on TF
  Serving's test models; expected values are TF Serving's.
- Hostile gRPC requests against `python -m catdog.serve` in its own process: after every one the
  same process must still answer a good request, and no answer may be UNKNOWN.
"""

from __future__ import annotations

import grpc
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from conftest import TINY_PNG, assert_still_serving, request_with


def test_get_model_status_grpc(tfs_stubs):
    """S testGetModelStatus."""
    result = tfs_stubs[1].GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec={"name": "default"}), 20)
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].status.error_code == 0


def test_get_model_metadata_grpc(tfs_stubs):
    """S testGetModelMetadata."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "default"},
                                                             metadata_field=["signature_def"])
    result = tfs_stubs[0].GetModelMetadata(request, 20)
    assert result.model_spec.name == "default" and result.model_spec.version.value == 123
    assert list(result.metadata) == ["signature_def"]


def grpc_predict(serve_process, request: predict_pb2.PredictRequest) -> grpc.StatusCode:
    channel = grpc.insecure_channel(f"127.0.0.1:{serve_process[1]}")
    try:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()
    finally:
        channel.close()


def tensor(dtype, dims, **values) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]), **values)
    return proto


@pytest.mark.parametrize("signature,alias,proto,code", [
    ("predict_pixels", "pixels", tensor(types_pb2.DT_FLOAT, [20000, 32, 32, 3]),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("serving_default", "image_bytes", tensor(types_pb2.DT_STRING, [10**8]),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("predict_pixels", "pixels", tensor(types_pb2.DT_FLOAT, [2**40, 32, 32, 3]),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("predict_pixels", "pixels", tensor(types_pb2.DT_RESOURCE, [1]),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("predict_pixels", "pixels", tensor(types_pb2.DT_VARIANT, [1]),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("predict_pixels", "pixels", tensor(types_pb2.DT_FLOAT, [1, 32, 32, 3],
                                        tensor_content=b"\0" * 7),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("predict_pixels", "pixels", tensor(types_pb2.DT_FLOAT, [1], float_val=[1.0, 2.0]),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("predict_pixels", "pixels", tensor(types_pb2.DT_FLOAT, [-5, 2]),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("serving_default", "image_bytes", tensor(types_pb2.DT_STRING, [10000],
                                              string_val=[TINY_PNG] * 10000),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
])
def test_hostile_grpc_requests_get_a_status_and_the_server_lives(serve_process, signature, alias,
                                                                  proto, code):
    assert grpc_predict(serve_process, request_with(signature, alias, proto)) == code
    assert_still_serving(serve_process)
