"""Labels photos in bulk on Apache Beam: the pipeline behind `python -m catdog.batch`.

    match files → spread them → read each → RunInference (catdog's ModelHandler) → one record
    per photo → JSON lines, Parquet or TF Serving PredictionLogs

The model is a SavedModel version folder, called through its `serving_default` signature: raw
image bytes in, decoding and resizing in the graph (in parallel across the batch), what TF
Serving runs. Beam's own `TFModelHandlerTensor` loads SavedModels with
`tf.keras.models.load_model`, which Keras 3 no longer does (apache/beam#30616), and tfx-bsl's
RunInference cannot be installed beside catdog's absl-py and tensorflow-serving-api; hence
`SavedModelHandler`, after Beam's `ml/inference/base.py`.

One undecodable file fails the graph's whole batch. The handler then decodes that batch's
photos one by one as `catdog.predict` does (`images.decode_checked`), answers the readable ones
together through `predict_pixels` and gives each other photo its error, in predict's words: one
bad photo costs its batch a second pass, never an answer. A file that cannot be read, or whose
header declares more than --max_image_pixels, is an error record before batching. The records
are `catdog.predict --format=jsonl`'s (`inference.answer_record`). The runner is only a
pipeline option: the same code runs locally, on Dataflow, Flink or Spark.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from catdog import contract, images, inference, versions
from catdog.errors import CatdogError, first_line
from catdog.image_formats import IMAGE_EXTENSIONS
from catdog.terminal import stderr_set_aside

NAMESPACE = "catdog"  # Beam metrics: labelled, failed, skipped
SUFFIXES = {"jsonl": ".jsonl", "parquet": ".parquet", "tfrecord": ".tfrecord"}
ERRORS_SUFFIX = ".errors.jsonl"  # --format=tfrecord: error records, beside the PredictionLogs
_PROGRESS_SECONDS = 10.0


class ServedModel:
    """A SavedModel version's signatures and class names, loaded once per worker. Beam keeps it
    in a weak-referencing cache, and behind a proxy (where attribute access fails) when a model
    is shared between processes, so callers use methods only."""

    def __init__(self, version: str):
        signatures = tf.saved_model.load(version).signatures
        self._by_bytes = signatures[contract.SERVING_DEFAULT]
        self._by_pixels = signatures[contract.PREDICT_PIXELS]
        self._class_names = read_class_names(version)

    def class_names(self) -> list[str]:
        return self._class_names

    def image_size(self) -> int:
        return self._by_pixels.structured_input_signature[1][contract.PIXELS].shape[1]

    def answer_encoded(self, encoded: Sequence[bytes]) -> dict[str, np.ndarray]:
        """serving_default's outputs (probabilities, class_ids, classes) for encoded images;
        InvalidArgumentError when any of them does not decode."""
        return _numpy(self._by_bytes(**{contract.IMAGE_BYTES: tf.constant(list(encoded))}))

    def answer_pixels(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """predict_pixels' outputs, the same three, for decoded and resized images."""
        return _numpy(self._by_pixels(**{contract.PIXELS: tf.constant(pixels, tf.float32)}))


def _numpy(outputs: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in outputs.items()}


def read_class_names(version: str) -> list[str]:
    """A version's labels asset (local or remote)."""
    with tf.io.gfile.GFile(f"{version}/assets/{contract.LABELS_FILE}") as f:
        return f.read().splitlines()


ERROR = "error"  # a PredictionResult's inference for a photo that could not be answered


class SavedModelHandler(ModelHandler[bytes, PredictionResult, ServedModel]):
    """Beam's ModelHandler for a catdog SavedModel version: encoded photos in, a
    PredictionResult per photo out, whose example is the photo's bytes and whose inference is
    its row of every output, or {"error": why} for a photo that does not decode."""

    def __init__(self, version: str, batch_size: int, max_pixels: int):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._version = version
        self._max_pixels = max_pixels

    def load_model(self) -> ServedModel:
        return ServedModel(self._version)

    def run_inference(self, batch: Sequence[bytes], model: ServedModel,
                      inference_args: dict[str, Any] | None = None
                      ) -> Iterable[PredictionResult]:
        try:  # libjpeg's native complaints, as predict treats them: in the photo's error record
            with stderr_set_aside():
                rows = _rows(model.answer_encoded(batch))
        except tf.errors.InvalidArgumentError:
            rows = self._one_by_one(batch, model)
        return [PredictionResult(encoded, row, self._version)
                for encoded, row in zip(batch, rows)]

    def _one_by_one(self, batch: Sequence[bytes], model: ServedModel) -> list[dict[str, Any]]:
        """A batch the graph refused: each photo decoded as predict decodes it, the readable
        ones answered together, the others given their error."""
        decoded = [images.decode_checked(encoded, model.image_size(), self._max_pixels)
                   for encoded in batch]
        readable = [pixels.numpy() for pixels, problem in decoded if problem is None]
        answers = iter(_rows(model.answer_pixels(np.stack(readable))) if readable else [])
        return [{ERROR: problem} if problem else next(answers) for _, problem in decoded]

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(encoded) for encoded in batch)


def _rows(outputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Outputs of a batch → one {output name: row} per image."""
    count = len(next(iter(outputs.values())))
    return [{name: value[i] for name, value in outputs.items()} for i in range(count)]


FAILED = "failed"  # the tag of error records


class ReadPhoto(beam.DoFn):
    """A path → (path, its bytes), or an error record (tagged FAILED) when the file cannot be
    read or its header declares more pixels than the limit (checked before any decoding)."""

    def __init__(self, max_pixels: int):
        self._max_pixels = max_pixels
        self._failed = Metrics.counter(NAMESPACE, "failed")

    def process(self, path: str) -> Iterator[Any]:
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                encoded = f.read()
        except Exception as error:  # each file system (local, GCS, S3, HDFS) raises its own
            yield _failed(self._failed, path, f"cannot read: {first_line(error)}")
            return
        problem = images.pixel_limit_problem(encoded, self._max_pixels)
        yield _failed(self._failed, path, problem) if problem else (path, encoded)


def _failed(counter: Any, path: str, problem: str) -> beam.pvalue.TaggedOutput:
    counter.inc()
    return beam.pvalue.TaggedOutput(FAILED, {"path": path, "error": problem})


class Answer(beam.DoFn):
    """(path, PredictionResult) → predict's record for it (for --format=tfrecord, the
    PredictionLog TF Serving would have logged), or its error record (tagged FAILED); counts
    and, every few seconds, says how many this worker has labelled."""

    def __init__(self, class_names: Sequence[str], model_name: str, as_prediction_log: bool):
        self._class_names = list(class_names)
        self._model_name = model_name
        self._as_log = as_prediction_log
        self._labelled = Metrics.counter(NAMESPACE, "labelled")
        self._failed = Metrics.counter(NAMESPACE, "failed")

    def setup(self) -> None:
        self._count, self._start = 0, time.monotonic()
        self._said = self._start

    def process(self, element: tuple[str, PredictionResult]) -> Iterator[Any]:
        path, result = element
        if ERROR in result.inference:
            yield _failed(self._failed, path, result.inference[ERROR])
            return
        self._labelled.inc()
        self._tell_progress()
        if self._as_log:
            yield prediction_log(self._model_name, result).SerializeToString()
        else:
            yield inference.answer_record(
                path, self._class_names, result.inference[contract.PROBABILITIES])

    def _tell_progress(self) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._said >= _PROGRESS_SECONDS:
            self._said = now
            print(f"worker {os.getpid()}: labelled {self._count} photos "
                  f"({self._count / (now - self._start):.1f}/s)", file=sys.stderr, flush=True)


def prediction_log(model_name: str, result: PredictionResult
                   ) -> prediction_log_pb2.PredictionLog:
    """One photo's request and response as TF Serving logs a Predict call (BulkInferrer's
    output): the request embeds the encoded image."""
    version = os.path.basename(os.path.normpath(result.model_id))
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
        name=model_name, signature_name=contract.SERVING_DEFAULT))
    request.inputs[contract.IMAGE_BYTES].CopyFrom(
        tf.make_tensor_proto([result.example], dtype=tf.string))
    response = predict_pb2.PredictResponse(model_spec=model_pb2.ModelSpec(
        name=model_name, signature_name=contract.SERVING_DEFAULT))
    if version.isdigit():
        response.model_spec.version.value = int(version)
    for name, row in result.inference.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(row)[None]))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request, response=response))


def input_patterns(given: str) -> list[str]:
    """--input as Beam file patterns. A folder (local, or any path ending in '/') means every
    file under it, recursively. In Beam's globs `**` matches one folder level or more, so
    'photos/**/*.jpg' would miss photos/cat.jpg; as in a shell's globstar, each '/**/' also
    stands for no folder at all (the patterns may overlap; matches are made distinct)."""
    if given.endswith("/") or ("://" not in given and os.path.isdir(given)):
        return [FileSystems.join(given.rstrip("/") or "/", "**")]
    parts = given.split("/**/")
    return ["".join(part + joint for part, joint in zip(parts, (*joints, "")))
            for joints in itertools.product(("/**/", "/"), repeat=len(parts) - 1)]


class _KeepImages(beam.DoFn):
    """Matched files → their paths, images only; the others are counted as skipped."""

    def __init__(self):
        self._skipped = Metrics.counter(NAMESPACE, "skipped")

    def process(self, metadata: Any) -> Iterator[str]:
        if metadata.path.lower().endswith(IMAGE_EXTENSIONS):
            yield metadata.path
        else:
            self._skipped.inc()


def parquet_schema(class_names: Sequence[str]) -> pa.Schema:
    """predict's record as columns: a failed photo has only path and error."""
    return pa.schema([
        ("path", pa.string()), ("label", pa.string()), ("probability", pa.float64()),
        ("probabilities", pa.struct([(name, pa.float64()) for name in class_names])),
        ("error", pa.string())])


def label_photos(pipeline: beam.Pipeline, patterns: Sequence[str], version: str,
                 class_names: Sequence[str], output: str, output_format: str, batch_size: int,
                 max_pixels: int, model_name: str) -> None:
    """Adds the labelling to `pipeline`: every image file the patterns match gets one record in
    the files `output`* (see module docstring)."""
    photos = (pipeline
              | "Patterns" >> beam.Create(list(patterns))
              | "Match" >> fileio.MatchAll()
              | "ImagesOnly" >> beam.ParDo(_KeepImages())
              | "OnceEachAndSpread" >> beam.Distinct()
              | "Read" >> beam.ParDo(ReadPhoto(max_pixels)).with_outputs(FAILED, main="read"))
    answers = (photos.read
               | "RunInference" >> RunInference(
                   KeyedModelHandler(SavedModelHandler(version, batch_size, max_pixels)))
               | "Answer" >> beam.ParDo(Answer(class_names, model_name,
                                               output_format == "tfrecord")).with_outputs(
                   FAILED, main="answered"))
    failed = (photos[FAILED], answers[FAILED]) | "AllErrors" >> beam.Flatten()
    suffix = SUFFIXES[output_format]
    if output_format == "tfrecord":
        _ = answers.answered | "WriteLogs" >> beam.io.WriteToTFRecord(
            output, file_name_suffix=suffix)
        _ = (failed | "ErrorsAsJson" >> beam.Map(json.dumps)
             | "WriteErrors" >> beam.io.WriteToText(output, file_name_suffix=ERRORS_SUFFIX))
        return
    records = (answers.answered, failed) | "AllRecords" >> beam.Flatten()
    if output_format == "jsonl":
        _ = (records | "AsJson" >> beam.Map(json.dumps)
             | "WriteJsonLines" >> beam.io.WriteToText(output, file_name_suffix=suffix))
    else:
        _ = records | "WriteParquet" >> beam.io.WriteToParquet(
            output, parquet_schema(class_names), file_name_suffix=suffix)


def counts(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """The finished pipeline's labelled, failed and skipped photos (Beam metrics, committed
    where the runner tells them apart)."""
    found = {"labelled": 0, "failed": 0, "skipped": 0}
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        if counter.key.metric.name in found:
            found[counter.key.metric.name] += value
    return found


LOCAL_RUNNER = "FnApiRunner"  # needs no download (DirectRunner first fetches Prism's binary)


def pipeline_options(beam_args: Sequence[str]) -> beam.options.pipeline_options.PipelineOptions:
    """Beam's pipeline options from the arguments after `--`, on the local FnApiRunner unless
    --runner names another; an option no Beam runner knows is an error, not a warning."""
    options_ = beam.options.pipeline_options.PipelineOptions
    loose = [arg for arg in beam_args if not arg.startswith("--")]
    if loose:
        raise CatdogError(f"unexpected argument '{loose[0]}': Beam's pipeline options go after "
                          "'--', each as --name=value")
    if not any(arg.split("=")[0] == "--runner" for arg in beam_args):
        beam_args = [f"--runner={LOCAL_RUNNER}", *beam_args]
    options = options_(list(beam_args))
    unknown = (set(options.get_all_options(retain_unknown_options=True))
               - set(options.get_all_options()))
    if unknown:
        raise CatdogError(f"no Beam runner knows the pipeline option(s) --{', --'.join(unknown)} "
                          "(Beam's options: python -m apache_beam.examples.wordcount --help)")
    return options


def resolve_version(model: str) -> str:
    """--model as a SavedModel version folder: itself, or a local base path's newest version."""
    if tf.io.gfile.exists(f"{model.rstrip('/')}/saved_model.pb"):
        return model.rstrip("/")
    newest = None if "://" in model else versions.newest(model)
    if newest is None or not (newest / "saved_model.pb").is_file():
        raise CatdogError(f"--model={model} is neither a SavedModel version folder (holding "
                          "saved_model.pb) nor a local base path with one (e.g. export/catdog)")
    return str(newest)


def check_input(given: str, patterns: Sequence[str]) -> None:
    """Fails at once, in one line, when --input matches nothing (rather than mid-pipeline)."""
    try:
        found = [m.metadata_list for m in FileSystems.match(list(patterns),
                                                             limits=[1] * len(patterns))]
    except Exception as error:  # Beam wraps each file system's own errors in BeamIOError
        raise CatdogError(f"--input={given}: {first_line(error)}") from None
    if not any(found):
        raise CatdogError(f"--input={given} matches no files (a folder, or a glob such as "
                          "'photos/**/*.jpg')")


def run_labelling(options: beam.options.pipeline_options.PipelineOptions,
                  patterns: Sequence[str],
                  version: str, output: str, output_format: str, batch_size: int,
                  max_pixels: int, model_name: str) -> dict[str, int]:
    """Runs the labelling to the end; the counts of labelled, failed and skipped files."""
    class_names = read_class_names(version)
    pipeline = beam.Pipeline(options=options)
    label_photos(pipeline, patterns, version, class_names, output, output_format, batch_size,
                 max_pixels, model_name)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as error:  # a runner reports a failed step as its own exception type
        raise CatdogError(f"the labelling pipeline failed: {first_line(error)}") from None
    return counts(result)
