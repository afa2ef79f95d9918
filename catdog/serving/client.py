"""One client for a served catdog model, over TF Serving's gRPC or REST API.

    python -m catdog.client --server=grpc://localhost:8500 --model=catdog cat.jpg dog.png
    python -m catdog.client --server=http://localhost:8501 --model=catdog photos/*.jpg

Works against TensorFlow Serving and against `python -m catdog.serve` alike. Images are sent as
encoded bytes to the `serving_default` signature, which decodes and resizes them in the graph, so
no preprocessing happens here. Requests time out after `timeout` seconds and are retried with
backoff while the server is UNAVAILABLE; other errors raise `ServingError` with the server's code
and message.
"""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import base64
import dataclasses
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import tensorflow as tf
from absl import flags
from google.protobuf import json_format
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from catdog import contract, image_formats
from catdog.commands import CLIENT_USAGE
from catdog.errors import CatdogError
from catdog.images import image_example
from catdog.serving import json_tensor, tensors
from catdog.serving.status import ServingError, code_of_http_status

T = TypeVar("T")
Image = str | os.PathLike | bytes


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The model's answer for one image; `probabilities[i]` is class id i's probability."""

    label: str
    probability: float
    probabilities: tuple[float, ...]


class GrpcTransport:
    """TF Serving's PredictionService and ModelService over gRPC."""

    def __init__(self, target: str, timeout: float):
        self.timeout = timeout
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServingError(error.code(), error.details() or "") from None

    def predict(self, spec: model_pb2.ModelSpec, inputs: dict[str, np.ndarray]
                ) -> dict[str, np.ndarray]:
        request = predict_pb2.PredictRequest(model_spec=spec)
        for key, array in inputs.items():
            request.inputs[key].CopyFrom(tensors.tensor_proto(array))
        response = self._call(self.prediction.Predict, request)
        return {k: tensors.array_from_proto(v) for k, v in response.outputs.items()}

    def classify(self, spec: model_pb2.ModelSpec, examples: list) -> list[dict[str, float]]:
        request = classification_pb2.ClassificationRequest(
            model_spec=spec, input=input_pb2.Input(
                example_list=input_pb2.ExampleList(examples=examples)))
        response = self._call(self.prediction.Classify, request)
        return [{c.label: c.score for c in result.classes}
                for result in response.result.classifications]

    def metadata(self, spec: model_pb2.ModelSpec
                 ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return self._call(self.prediction.GetModelMetadata,
                          get_model_metadata_pb2.GetModelMetadataRequest(
                              model_spec=spec, metadata_field=["signature_def"]))

    def status(self, spec: model_pb2.ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
        return self._call(self.models.GetModelStatus,
                          get_model_status_pb2.GetModelStatusRequest(model_spec=spec))

    def close(self) -> None:
        self.channel.close()


class RestTransport:
    """TF Serving's REST API (JSON, {"b64": ...} for bytes)."""

    def __init__(self, base_url: str, timeout: float):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._output_names: dict[tuple, str] = {}

    def _url(self, spec: model_pb2.ModelSpec, suffix: str = "") -> str:
        version = f"/versions/{spec.version.value}" if spec.HasField("version") else ""
        return f"{self.base_url}/v1/models/{spec.name}{version}{suffix}"

    def _request(self, url: str, body: dict | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise _rest_error(error) from None
        except TimeoutError:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"no answer from {url} within {self.timeout} s") from None
        except (urllib.error.URLError, ConnectionError) as error:
            raise ServingError(grpc.StatusCode.UNAVAILABLE,
                               f"cannot reach {url}: {getattr(error, 'reason', error)}") from None

    def predict(self, spec: model_pb2.ModelSpec, inputs: dict[str, np.ndarray]
                ) -> dict[str, np.ndarray]:
        body = predict_body(inputs, spec.signature_name)
        document = self._request(self._url(spec, ":predict"), body)
        return outputs_from_json(document, lambda: self._only_output_of(spec))

    def _only_output_of(self, spec: model_pb2.ModelSpec) -> str:
        """The alias of a one-output signature (TF Serving's response does not name it)."""
        key = (spec.name, spec.version.value, spec.signature_name)
        if key not in self._output_names:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            self.metadata(spec).metadata["signature_def"].Unpack(signature_map)
            signature = signature_map.signature_def[spec.signature_name or
                                                    contract.SERVING_DEFAULT]
            self._output_names[key] = next(iter(signature.outputs))
        return self._output_names[key]

    def classify(self, spec: model_pb2.ModelSpec, examples: list) -> list[dict[str, float]]:
        body = {"signature_name": spec.signature_name,
                "examples": [example_to_json(e) for e in examples]}
        return classifications_from_json(self._request(self._url(spec, ":classify"), body))

    def metadata(self, spec: model_pb2.ModelSpec
                 ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """TF Serving writes the SignatureDefMap under metadata.signature_def, without @type."""
        document = self._request(self._url(spec, "/metadata"))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        json_format.ParseDict(document["model_spec"], response.model_spec,
                              ignore_unknown_fields=True)
        response.metadata["signature_def"].Pack(json_format.ParseDict(
            document["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap(),
            ignore_unknown_fields=True))
        return response

    def status(self, spec: model_pb2.ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
        return json_format.ParseDict(self._request(self._url(spec)),
                                     get_model_status_pb2.GetModelStatusResponse())

    def close(self) -> None:
        pass


def _rest_error(error: urllib.error.HTTPError) -> ServingError:
    payload = error.read()
    try:
        message = json.loads(payload)["error"]
    except (ValueError, KeyError, TypeError):
        message = payload.decode("utf-8", "replace") or error.reason
    return ServingError(code_of_http_status(error.code), message)


# --- the client's side of TF Serving's REST JSON ----------------------------------------------

def predict_body(inputs: Mapping[str, np.ndarray], signature_name: str) -> dict[str, Any]:
    """A columnar predict body (columnar keeps several named outputs unambiguous)."""
    columns = {}
    for name, array in inputs.items():
        array = np.asarray(array)
        columns[name] = (np.vectorize(json_tensor.b64_json, otypes=[object])(array).tolist()
                         if array.dtype == object else array.tolist())
    return {"signature_name": signature_name, "inputs": columns}


def _array_from_json(value: Any) -> np.ndarray:
    def decode(v):
        if isinstance(v, list):
            return [decode(x) for x in v]
        return base64.b64decode(v["b64"]) if json_tensor.is_b64(v) else v

    decoded = decode(value)
    array = np.array(decoded, dtype=object)
    if all(isinstance(v, (bytes, str)) for v in array.reshape(-1)):
        return array
    return np.array(decoded)


def outputs_from_json(document: Mapping[str, Any], single_output_name: Callable[[], str]
                      ) -> dict[str, np.ndarray]:
    """The arrays of a columnar predict response. Several outputs come keyed by alias; one comes
    bare, and `single_output_name()` says its alias (from the signature's metadata)."""
    outputs = document["outputs"]
    if isinstance(outputs, dict) and not json_tensor.is_b64(outputs):
        return {name: _array_from_json(value) for name, value in outputs.items()}
    return {single_output_name(): _array_from_json(outputs)}


def classifications_from_json(document: Mapping[str, Any]) -> list[dict[str, float]]:
    """{label: score} per example from a classify response's `results`."""
    return [{label: float(score) for label, score in item} for item in document["results"]]


def example_to_json(example: example_pb2.Example) -> dict[str, Any]:
    """A tf.Example as a classify-body example (bytes as {"b64"}, numbers as numbers)."""
    body = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        body[name] = ([json_tensor.b64_json(v) for v in values]
                      if kind == "bytes_list" else values)
    return body


class Client:
    """Predictions, metadata and status of one model on one server (gRPC or REST by URL)."""

    def __init__(self, server: str, model: str = contract.DEFAULT_MODEL_NAME,
                 version: int | None = None, timeout: float = 10.0, retries: int = 3,
                 backoff_seconds: float = 0.2):
        scheme, _, address = server.partition("://")
        if scheme == "grpc":
            self.transport = GrpcTransport(address.rstrip("/"), timeout)
        elif scheme in ("http", "https"):
            self.transport = RestTransport(server, timeout)
        else:
            raise CatdogError(f"--server={server} must start with grpc:// or http://")
        self.model, self.version = model, version
        self.retries, self.backoff_seconds = retries, backoff_seconds

    def _spec(self, signature_name: str = "") -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.model, signature_name=signature_name)
        if self.version:
            spec.version.value = self.version
        return spec

    def _with_retries(self, call: Callable[[], T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return call()
            except ServingError as error:
                if error.code != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise
                time.sleep(self.backoff_seconds * 2**attempt)
        raise AssertionError("unreachable")

    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        """Label, its probability and all class probabilities for each image (path or bytes)."""
        encoded = np.array([_read(image) for image in images], dtype=object)
        outputs = self.predict_raw(contract.SERVING_DEFAULT, {contract.IMAGE_BYTES: encoded})
        labels = [c.decode() if isinstance(c, bytes) else str(c)
                  for c in outputs[contract.CLASSES]]
        return [Prediction(label, float(p[i]), tuple(float(x) for x in p)) for label, i, p in
                zip(labels, outputs[contract.CLASS_IDS], outputs[contract.PROBABILITIES])]

    def predict_raw(self, signature_name: str, inputs: dict[str, np.ndarray]
                    ) -> dict[str, np.ndarray]:
        """Any signature's outputs for named input arrays (object arrays for bytes)."""
        return self._with_retries(lambda: self.transport.predict(self._spec(signature_name),
                                                                 inputs))

    def classify(self, images: Sequence[Image]) -> list[dict[str, float]]:
        """{class name: probability} for each image, through TF Serving's Classify API."""
        examples = [image_example(_read(image)) for image in images]
        return self._with_retries(lambda: self.transport.classify(
            self._spec(contract.CLASSIFY), examples))

    def metadata(self) -> dict[str, dict[str, Any]]:
        """{signature name: {"method", "inputs", "outputs"}} with dtypes and shapes."""
        response = self._with_retries(lambda: self.transport.metadata(self._spec()))
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {key: {"method": sig.method_name,
                      "inputs": {k: _tensor_info(v) for k, v in sig.inputs.items()},
                      "outputs": {k: _tensor_info(v) for k, v in sig.outputs.items()}}
                for key, sig in signature_map.signature_def.items()}

    def status(self) -> list[dict[str, Any]]:
        """[{"version": N, "state": "AVAILABLE", ...}] for the model's versions."""
        response = self._with_retries(lambda: self.transport.status(self._spec()))
        return [{"version": s.version,
                 "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
                 "error_message": s.status.error_message}
                for s in response.model_version_status]

    def close(self) -> None:
        self.transport.close()


def _tensor_info(info) -> dict[str, Any]:
    """dtype as TensorFlow names it; shape None for any rank, -1 for any size."""
    dtype = (tf.dtypes.as_dtype(info.dtype).name if info.dtype != types_pb2.DT_INVALID
             else "invalid")
    return {"dtype": dtype, "shape": None if info.tensor_shape.unknown_rank else
            [d.size for d in info.tensor_shape.dim]}


def _read(image: Image) -> bytes:
    if isinstance(image, bytes):
        return image
    try:
        return Path(image).read_bytes()
    except OSError as error:
        raise CatdogError(f"cannot read image {image}: {error.strerror}") from None


def main(argv: Sequence[str]) -> int:
    f = flags.FLAGS
    skipped: list[str] = []
    paths = list(image_formats.image_paths(argv[1:], skipped))  # folders as predict reads them
    if skipped:
        print(image_formats.skipped_message(skipped), file=sys.stderr, flush=True)
    if not paths:
        raise CatdogError(f"usage: python -m catdog.client {CLIENT_USAGE} (no images given or "
                          "found)")
    client = Client(f.server, f.model, f.model_version or None, f.timeout, f.retries)
    failures = 0
    try:
        for image in paths:
            try:
                (prediction,) = client.predict([image])
            except (ServingError, CatdogError) as error:
                print(f"{image}\terror: {error}{_hint(error, f.model)}", file=sys.stderr)
                failures += 1
                continue
            print(f"{image}\t{prediction.label}\t{prediction.probability:.6f}")
    finally:
        client.close()
    return 1 if failures else 0


def _hint(error: Exception, model: str) -> str:
    """What TF Serving's NOT_FOUND for a whole model leaves unsaid (its message is kept)."""
    if isinstance(error, ServingError) and error.code == grpc.StatusCode.NOT_FOUND and \
            "Servable not found for request" in error.message:
        return (f" (the server serves no model named {model!r}, or not that version: check "
                "the name it was started with, --model_name, whose TF Serving default is "
                "'default'; catdog.serve's log names the models it serves)")
    return ""


def run() -> None:
    """The `catdog-client` console script (and `python -m catdog.client`)."""
    from catdog import cli

    cli.run_command("client", main)


if __name__ == "__main__":
    run()
