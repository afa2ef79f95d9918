"""One loaded SavedModel version, run the way TF Serving's TensorFlow servable runs it.

Like TF Serving's C++ loader, a version is loaded from its MetaGraphDef into a graph and a session,
and signatures are run by tensor name: feeds are checked for alias and dtype, never for shape
(predict_util.cc leaves shapes to the graph), and the signature's method name is not enforced
(TF Serving's default). Classify and Regress feed the serialized tf.Examples of an `Input` to the
signature's one input, as classifier.cc and regressor.cc do. Concurrent Predict calls can be
merged into one session run by a `Batcher` (TF Serving's --enable_batching).
"""

from __future__ import annotations

import ctypes
import gc
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    input_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from catdog import contract
from catdog.serving import graph_ops, tensors
from catdog.serving.batching import Batcher, BatchingOptions
from catdog.serving.status import ServingError, invalid

DEFAULT_SIGNATURE = contract.SERVING_DEFAULT
_SIGNATURE_METHODS = (contract.PREDICT_METHOD, contract.CLASSIFY_METHOD, contract.REGRESS_METHOD)


class Servable:
    """A SavedModel version in its own graph and session; counts the requests running on it so
    that it is unloaded only once they have finished."""

    def __init__(self, name: str, version: int, path: Path,
                 batcher_options: BatchingOptions | None = None, timeout_ms: int = 0,
                 method_name_check: bool = False, verify_graph_ops: bool = False,
                 enable_model_warmup: bool = True):
        self.name, self.version, self.path = name, version, Path(path)
        if verify_graph_ops:  # before anything of the graph runs (catdog.serve's default)
            problem = graph_ops.op_problem(path)
            if problem:
                raise ValueError(f"refused (--verify_graph_ops): {problem}")
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        # TF Serving's own loading path (a MetaGraphDef into a session); TensorFlow logs it as
        # deprecated for Python users once per process, which catdog's commands keep off screen.
        meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(path))
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(
            meta_graph.signature_def)
        self.method_name_check = method_name_check  # --enable_signature_method_name_check
        self.enable_model_warmup = enable_model_warmup
        self.timeout_ms = 0  # no timeout while warming up (TF Serving's warm-up has none)
        self._request_timeout_ms = timeout_ms
        self._callables: dict[tuple, object] = {}
        self._callables_lock = threading.Lock()
        self._in_flight = 0
        self._idle = threading.Condition()
        self.batcher = Batcher(self._run, batcher_options) if batcher_options else None

    # --- request accounting -------------------------------------------------------------------

    def acquire(self) -> None:
        """Counts one more request running on this version (see `ModelManager.use`)."""
        with self._idle:
            self._in_flight += 1

    def release(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def close(self) -> None:
        """Waits for running requests, then releases the session."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0)
        if self.batcher:
            self.batcher.stop()
        self.session.close()
        self._callables.clear()
        self.graph = self.session = None
        _return_memory_to_the_system()

    # --- signatures ---------------------------------------------------------------------------

    def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        key = name or DEFAULT_SIGNATURE
        if key not in self.signature_defs:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Serving signature key \"{key}\" not found.")
        return self.signature_defs[key]

    def _example_signature(self, name: str, method: str, kind: str
                           ) -> meta_graph_pb2.SignatureDef:
        """GetClassificationSignatureDef / GetRegressionSignatureDef: the signature named for a
        Classify or Regress request, or TF Serving's INVALID_ARGUMENT."""
        key = name or DEFAULT_SIGNATURE
        if key not in self.signature_defs:
            raise invalid(f"No signature was found with the name: {key}")
        signature = self.signature_defs[key]
        if self.method_name_check and signature.method_name != method:
            raise invalid(f"Expected {kind} signature method_name to be {method}. Was: "
                          f"{signature.method_name}")
        return signature

    def input_dtypes(self, signature_name: str) -> dict[str, int]:
        """Input alias → DataType, for parsing a REST body (GetInfoMap)."""
        key = signature_name or DEFAULT_SIGNATURE
        if key not in self.signature_defs:
            raise invalid(f"Serving signature name: \"{key}\" not found in signature def")
        return {k: v.dtype for k, v in self.signature_defs[key].inputs.items()}

    # --- running ------------------------------------------------------------------------------

    def _run(self, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]) -> list[np.ndarray]:
        """One session run by tensor names, with no feed shape checks."""
        feed_names = tuple(sorted(feeds))
        key = (feed_names, tuple(fetches), self.timeout_ms)
        with self._callables_lock:
            run = self._callables.get(key)
            if run is None:
                options = config_pb2.CallableOptions(feed=feed_names, fetch=list(fetches))
                if self.timeout_ms > 0:
                    options.run_options.timeout_in_ms = self.timeout_ms
                # Private on purpose: the public Session.run/make_callable refuse a feed whose
                # shape differs from its placeholder's, which TF Serving's C++ session runs
                # (its own tests send [2.0] to half_plus_two's x: [None, 1]).
                run = self._callables[key] = self.session._make_callable_from_options(options)
        try:
            return list(run(*(feeds[n] for n in feed_names)))
        except tf.errors.OpError as error:
            raise ServingError.from_tf_error(error) from None
        except (TypeError, ValueError) as error:
            raise invalid(f"tensor parsing error: {error}") from None

    def predict(self, signature_name: str, inputs: Mapping[str, np.ndarray],
                output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """PreProcessPrediction + session run: TF Serving's alias, dtype and filter checks."""
        signature = self.signature(signature_name)
        if self.method_name_check and signature.method_name not in _SIGNATURE_METHODS:
            raise ServingError(grpc.StatusCode.INTERNAL,
                               "Expected prediction signature method_name to be one of {"
                               f"{', '.join(_SIGNATURE_METHODS)}}}. Was: {signature.method_name}")
        _check_inputs(signature, inputs)
        aliases = _output_aliases(signature, output_filter)
        feeds = {signature.inputs[k].name: _fed_array(v, signature.inputs[k].dtype, k)
                 for k, v in inputs.items()}
        fetches = [signature.outputs[a].name for a in aliases]
        if self.batcher and feeds:
            outputs = self.batcher.run(feeds, fetches)
        else:
            outputs = self._run(feeds, fetches)
        return dict(zip(aliases, outputs))

    def _run_examples(self, signature: meta_graph_pb2.SignatureDef,
                      request_input: input_pb2.Input, outputs: Sequence[str]
                      ) -> tuple[int, list[np.ndarray]]:
        if len(signature.inputs) != 1:
            raise invalid("Expected one input Tensor.")
        (alias, info), = signature.inputs.items()
        examples = _serialized_examples(request_input)
        return len(examples), self._run({info.name: examples},
                                        [signature.outputs[o].name for o in outputs])

    def classify(self, signature_name: str, request_input: input_pb2.Input
                 ) -> classification_pb2.ClassificationResult:
        """RunClassify: `classes` and/or `scores` [batch, classes] per example."""
        signature = self._example_signature(signature_name, contract.CLASSIFY_METHOD,
                                            "classification")
        if len(signature.outputs) not in (1, 2):
            raise invalid(f"Expected one or two output Tensors, found "
                               f"{len(signature.outputs)}")
        wanted = [o for o in (contract.CLASSES, contract.SCORES) if o in signature.outputs]
        if not wanted:
            raise invalid("Expected classification signature outputs to contain at least "
                               f"one of \"{contract.CLASSES}\" or \"{contract.SCORES}\".")
        count, arrays = self._run_examples(signature, request_input, wanted)
        got = dict(zip(wanted, arrays))
        classes, scores = got.get(contract.CLASSES), got.get(contract.SCORES)
        for array, kind in ((classes, "classes"), (scores, "scores")):
            if array is not None and (array.ndim != 2 or array.shape[0] != count):
                raise invalid(f"Expected {kind} Tensor shape: [batch_size num_classes] "
                                   f"with batch size {count} but got {list(array.shape)}")
        result = classification_pb2.ClassificationResult()
        width = (classes if classes is not None else scores).shape[1]
        for i in range(count):
            item = result.classifications.add()
            for c in range(width):
                label = classes[i, c] if classes is not None else b""
                item.classes.add(label=label.decode("utf-8", "replace")
                                 if isinstance(label, bytes) else str(label),
                                 score=float(scores[i, c]) if scores is not None else 0.0)
        return result

    def regress(self, signature_name: str, request_input: input_pb2.Input
                ) -> regression_pb2.RegressionResult:
        """RunRegress: one float per example from the `outputs` tensor ([batch] or [batch, 1])."""
        signature = self._example_signature(signature_name, contract.REGRESS_METHOD,
                                            "regression")
        if len(signature.outputs) != 1:
            raise invalid("Expected one output Tensor.")
        if contract.REGRESS_OUTPUTS not in signature.outputs:
            raise invalid("No regression outputs found in SignatureDef")
        count, (values,) = self._run_examples(signature, request_input,
                                              [contract.REGRESS_OUTPUTS])
        if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
            raise invalid("Expected output Tensor shape to be either [batch_size] or "
                               f"[batch_size, 1] but got {list(values.shape)}")
        if values.shape[0] != count:
            raise invalid(f"Input batch size did not match output batch size: {count} "
                               f"vs. {values.shape[0]}")
        result = regression_pb2.RegressionResult()
        for value in values.reshape(-1):
            result.regressions.add(value=float(value))
        return result

    def warm_up(self) -> int | None:
        """Replays assets.extra/tf_serving_warmup_requests as TF Serving does; returns the count,
        or None with --noenable_model_warmup. Requests after it get the server's
        --rest_api_timeout_in_ms."""
        try:
            return self._replay_warmup() if self.enable_model_warmup else None
        finally:
            self.timeout_ms = self._request_timeout_ms

    def _replay_warmup(self) -> int:
        path = self.path / contract.WARMUP_FILE
        if not path.exists():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(path)):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            kind = log.WhichOneof("log_type")
            if kind == "predict_log":
                request = log.predict_log.request
                self.predict(request.model_spec.signature_name,
                             {k: tensors.array_from_proto(v) for k, v in request.inputs.items()},
                             request.output_filter)
            elif kind == "classify_log":
                request = log.classify_log.request
                self.classify(request.model_spec.signature_name, request.input)
            elif kind == "regress_log":
                request = log.regress_log.request
                self.regress(request.model_spec.signature_name, request.input)
            count += 1
        return count


def _return_memory_to_the_system() -> None:
    """Frees an unloaded version's memory for real: without malloc_trim, glibc keeps the freed
    heap and the server's RSS grows by a model's size at every version swap."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _check_inputs(signature: meta_graph_pb2.SignatureDef, inputs: Mapping) -> None:
    """VerifyRequestInputsSize and GetInputValues: the aliases must be the signature's."""
    sent, expected = set(inputs), set(signature.inputs)
    if sent != expected and (len(sent) > len(expected) or not signature.defaults):
        raise invalid(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - expected))}}}. Missing but required: "
            f"{{{','.join(sorted(expected - sent))}}}.")


def _output_aliases(signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]
                    ) -> list[str]:
    seen = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid(f"output tensor alias not found in signature: {alias} Outputs "
                          f"expected to be in the set "
                          f"{{{','.join(sorted(signature.outputs))}}}.")
        if alias in seen:
            raise invalid(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen or sorted(signature.outputs)


def _fed_array(array: np.ndarray, dtype: int, alias: str) -> np.ndarray:
    """The array as the signature's dtype, or TensorFlow's own INVALID_ARGUMENT wording."""
    want = tf.dtypes.as_dtype(dtype)
    got = tf.string if array.dtype == object or array.dtype.kind in "SU" else \
        tf.dtypes.as_dtype(array.dtype)
    if got != want:
        raise invalid(f"Expects arg for input '{alias}' to be {want.name} but "
                           f"{got.name} is provided")
    return array


def _serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """The Input's tf.Examples serialized; context features are merged into each example, as
    TF Serving's InputToSerializedExampleTensor does."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = list(request_input.example_list.examples)
    elif kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        examples = []
        for example in with_context.examples:
            merged = type(example)()
            merged.CopyFrom(with_context.context)
            merged.MergeFrom(example)
            examples.append(merged)
    else:
        raise invalid("Input is empty.")
    if not examples:
        raise invalid("Input is empty.")
    return np.array([e.SerializeToString() for e in examples], dtype=object)
