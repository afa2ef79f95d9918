"""TF Serving's gRPC services (PredictionService, ModelService): a thin transport over `api`."""

from __future__ import annotations

from collections.abc import Callable

from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from catdog.serving import api
from catdog.serving.api import Api
from catdog.serving.status import ServingError


def _model_name_of(request) -> str:
    if getattr(request, "tasks", None):
        return request.tasks[0].model_spec.name
    return getattr(getattr(request, "model_spec", None), "name", "")


def _grpc_method(function: Callable, api_name: str):
    """A servicer method running `function` through `Api.call`; errors abort with TF Serving's
    status."""
    def method(self, request, context):
        try:
            return self.api.call(lambda: function(self.api.core, request, self.api.options),
                                 _model_name_of(request), api_name, "GRPC")
        except ServingError as error:
            context.abort(error.code, error.message)
    return method


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, server_api: Api):
        self.api = server_api

    Predict = _grpc_method(api.predict, "Predict")
    Classify = _grpc_method(api.classify, "Classify")
    Regress = _grpc_method(api.regress, "Regress")
    MultiInference = _grpc_method(api.multi_inference, "MultiInference")
    GetModelMetadata = _grpc_method(api.metadata, "GetModelMetadata")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, server_api: Api):
        self.api = server_api

    GetModelStatus = _grpc_method(api.model_status, "GetModelStatus")
    HandleReloadConfigRequest = _grpc_method(api.reload_config, "HandleReloadConfigRequest")


def add_services(server, server_api: Api) -> None:
    """Registers both services on a grpc.Server."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(server_api), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(server_api), server)
