"""Each of TF Serving's calls once, for both transports (KServe's dataplane, in TF Serving's terms).

Every function takes the request proto and returns the response proto, or raises ServingError
with TF Serving's code and message. `grpc_service` and `rest` are thin transports over these,
and `Api.call` counts every request in the metrics, whichever transport it came by.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import grpc
import numpy as np
from absl import logging
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
    status_pb2,
)

from catdog import contract
from catdog.serving import tensors
from catdog.serving.metrics import Metrics
from catdog.serving.options import ServerOptions
from catdog.serving.servable import Servable
from catdog.serving.server_core import ServerCore
from catdog.serving.status import ServingError, invalid

T = TypeVar("T")
DEFAULTS = ServerOptions()


def _check_instances(count: int, options: ServerOptions) -> None:
    if count > options.max_request_instances:
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"request holds {count} instances; the limit is "
                           f"{options.max_request_instances} (--max_request_instances)")


def _checked_arrays(request_tensors, options: ServerOptions) -> dict:
    """Request tensors as arrays, each checked against the byte and instance limits."""
    arrays = {k: tensors.array_from_proto(v, options.max_request_bytes)
              for k, v in request_tensors.items()}
    for array in arrays.values():
        _check_instances(array.shape[0] if array.ndim else 1, options)
    return arrays


def _examples_in(request_input) -> int:
    kind = request_input.WhichOneof("kind")
    return len(getattr(request_input, kind).examples) if kind else 0


def _spec_of(servable, spec: model_pb2.ModelSpec, signature_name: str | None = None
             ) -> model_pb2.ModelSpec:
    """MakeModelSpec: the model name, the version served and the signature resolved."""
    result = model_pb2.ModelSpec(name=spec.name, signature_name=(
        signature_name if signature_name is not None else
        spec.signature_name or contract.SERVING_DEFAULT))
    result.version.value = servable.version
    return result


def _require_spec(request) -> None:
    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")


def predict(core: ServerCore, request: predict_pb2.PredictRequest,
            options: ServerOptions = DEFAULTS) -> predict_pb2.PredictResponse:
    _require_spec(request)
    servable, outputs = run_predict(core, request.model_spec, lambda _: request.inputs,
                                    options, request.output_filter)
    response = predict_pb2.PredictResponse(model_spec=_spec_of(servable, request.model_spec))
    for alias, array in outputs.items():
        response.outputs[alias].CopyFrom(tensors.tensor_proto(array))
    return response


def run_predict(core: ServerCore, spec: model_pb2.ModelSpec,
                request_tensors: Callable[[Servable], Mapping[str, tensors.TensorProto]],
                options: ServerOptions = DEFAULTS, output_filter: Sequence[str] = ()
                ) -> tuple[Servable, dict[str, np.ndarray]]:
    """Predict on the version `spec` names, with the request tensors that `request_tensors`
    makes for it (REST needs the version's input dtypes to read its JSON): the version that
    reads the request is the one that runs it."""
    with core.use(spec) as servable:
        inputs = _checked_arrays(request_tensors(servable), options)
        return servable, servable.predict(spec.signature_name, inputs, output_filter)


def _on_examples(core: ServerCore, request, options: ServerOptions, method: str, response_class):
    """Classify or Regress: the request's tf.Examples through `Servable.<method>`."""
    _require_spec(request)
    _check_instances(_examples_in(request.input), options)
    with core.use(request.model_spec) as servable:
        result = getattr(servable, method)(request.model_spec.signature_name, request.input)
    return response_class(model_spec=_spec_of(servable, request.model_spec), result=result)


def classify(core: ServerCore, request: classification_pb2.ClassificationRequest,
             options: ServerOptions = DEFAULTS) -> classification_pb2.ClassificationResponse:
    return _on_examples(core, request, options, "classify",
                        classification_pb2.ClassificationResponse)


def regress(core: ServerCore, request: regression_pb2.RegressionRequest,
            options: ServerOptions = DEFAULTS) -> regression_pb2.RegressionResponse:
    return _on_examples(core, request, options, "regress", regression_pb2.RegressionResponse)


def multi_inference(core: ServerCore, request: inference_pb2.MultiInferenceRequest,
                    options: ServerOptions = DEFAULTS) -> inference_pb2.MultiInferenceResponse:
    """Several classify/regress signatures of one model over the same examples."""
    _check_instances(_examples_in(request.input) * max(1, len(request.tasks)), options)
    if not request.tasks:
        raise invalid("Found no tasks in MultiInferenceRequest.")
    names, signatures = {t.model_spec.name for t in request.tasks}, set()
    if "" in names:
        raise invalid("Found ModelSpec with an empty model name.")
    if len(names) > 1:
        raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same "
                           "model name.")
    response = inference_pb2.MultiInferenceResponse()
    with core.use(request.tasks[0].model_spec) as servable:
        for task in request.tasks:
            signature = task.model_spec.signature_name or contract.SERVING_DEFAULT
            if signature in signatures:
                raise invalid(f"Duplicate evaluation of signature: {signature}")
            signatures.add(signature)
            if signature not in servable.signature_defs:
                raise invalid(f"Requested signature not found in model graph: {signature}")
            result = response.results.add(model_spec=_spec_of(servable, task.model_spec))
            if task.method_name == contract.CLASSIFY_METHOD:
                result.classification_result.CopyFrom(servable.classify(signature, request.input))
            elif task.method_name == contract.REGRESS_METHOD:
                result.regression_result.CopyFrom(servable.regress(signature, request.input))
            else:
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"Unsupported signature method_name: {task.method_name}")
    return response


def metadata(core: ServerCore, request: get_model_metadata_pb2.GetModelMetadataRequest, _=None
             ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    _require_spec(request)
    if not request.metadata_field:
        raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != "signature_def":
            raise invalid(f"Metadata field {field} is not supported")
    servable = core.servable(request.model_spec)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=_spec_of(servable, request.model_spec, request.model_spec.signature_name))
    response.metadata["signature_def"].Pack(signature_map)
    return response


def model_status(core: ServerCore, request: get_model_status_pb2.GetModelStatusRequest, _=None
                 ) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatusImpl: every version the monitor knows, newest first; only
    model_spec.version narrows it (a label does not)."""
    _require_spec(request)
    spec = request.model_spec
    version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
    return get_model_status_pb2.GetModelStatusResponse(
        model_version_status=core.monitor.statuses(spec.name, version))


def reload_config(core: ServerCore, request: model_management_pb2.ReloadConfigRequest, _=None
                  ) -> model_management_pb2.ReloadConfigResponse:
    """ModelServiceImpl::HandleReloadConfigRequest: a model list, applied by ServerCore (which
    refuses what TF Serving's ServerCore refuses, keeping the config in force)."""
    if request.config.WhichOneof("config") != "model_config_list":
        raise invalid("ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                      "ModelConfigList is currently supported")
    core.reload_config(request.config)
    return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto())


@dataclasses.dataclass
class Api:
    """The server's state every call needs: models, options (the request limits), metrics."""

    core: ServerCore
    options: ServerOptions
    metrics: Metrics

    def call(self, work: Callable[[], T], name: str, api: str, entrypoint: str) -> T:
        """Runs one API call for model `name`: any failure becomes a ServingError; the request
        is counted, for gRPC and REST alike."""
        start = time.monotonic()
        try:
            response = work()
        except ServingError as error:
            self.metrics.record(name, api, entrypoint, error.code.name, None)
            raise
        except Exception as error:  # the server answers every request and keeps serving
            logging.exception("internal error in %s", api)
            self.metrics.record(name, api, entrypoint, "INTERNAL", None)
            raise ServingError(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"
                               ) from None
        self.metrics.record(name, api, entrypoint, "OK", (time.monotonic() - start) * 1e6)
        return response
