"""Infra validation of a candidate SavedModel, the way the server would load it:
`python -m catdog.serving.infra_validation CANDIDATE_DIR IMAGE_FILE` (run by `catdog.publish`).

In a process of its own that imports nothing of catdog's training code, it
0. reads the graph before anything of it runs: an op catdog's exporter never writes (file I/O,
   Python, custom ops) refuses the candidate unloaded (`graph_ops.op_problem`);
1. checks the signature contract clients rely on: signature keys and method names, input and
   output aliases with their dtypes and shapes, and the labels asset (`contract_problems`);
2. loads the version as the server loads a servable (`Servable`: MetaGraphDef into a session);
3. replays its warm-up records, as TF Serving does before a version serves;
4. sends one real image through `serving_default` (its bytes), `predict_pixels` (its pixels,
   decoded as the signatures decode) and `classify` (a tf.Example).

It prints one JSON object on stdout: `{"ok": true, "answers": {signature: probabilities},
"classes": {...}, ...}`, or `{"ok": false, "failure": "<one line naming what failed>"}`. The
caller compares the answers with its own in-process model; this side only reports them.
"""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import ctypes
import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import message
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import input_pb2

from catdog import contract, images
from catdog.serving import graph_ops
from catdog.serving.servable import Servable

_PR_SET_PDEATHSIG = 1
_ANY = None  # a dimension of any size; a shape of None is any rank
_STRING, _FLOAT, _INT64 = types_pb2.DT_STRING, types_pb2.DT_FLOAT, types_pb2.DT_INT64


def expected_signatures(image_size: int, num_classes: int
                        ) -> dict[str, tuple[str, dict[str, tuple], dict[str, tuple]]]:
    """What catdog's clients rely on: signature → (method, inputs, outputs), each alias → (dtype,
    shape); shapes as lists with None for a dimension of any size, None for any rank."""
    predictions = {contract.PROBABILITIES: (_FLOAT, [_ANY, num_classes]),
                   contract.CLASS_IDS: (_INT64, [_ANY]),
                   contract.CLASSES: (_STRING, [_ANY])}
    return {
        contract.SERVING_DEFAULT: (contract.PREDICT_METHOD,
                                   {contract.IMAGE_BYTES: (_STRING, None)}, predictions),
        contract.PREDICT_PIXELS: (contract.PREDICT_METHOD, {
            contract.PIXELS: (_FLOAT, [_ANY, image_size, image_size, 3])}, predictions),
        contract.CLASSIFY: (contract.CLASSIFY_METHOD,
                            {contract.CLASSIFY_INPUTS: (_STRING, [_ANY])},
                            {contract.CLASSES: (_STRING, [_ANY, num_classes]),
                             contract.SCORES: (_FLOAT, [_ANY, num_classes])}),
    }


def _shape(info: meta_graph_pb2.TensorInfo) -> list | None:
    if info.tensor_shape.unknown_rank:
        return None
    return [d.size if d.size >= 0 else _ANY for d in info.tensor_shape.dim]


def _dtype_name(dtype: int) -> str:
    return tf.dtypes.as_dtype(dtype).name


def image_size_of(signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]) -> int | None:
    """The square side S of `predict_pixels`' [N, S, S, 3] input, if it has one."""
    signature = signature_defs.get(contract.PREDICT_PIXELS)
    info = signature.inputs.get(contract.PIXELS) if signature else None
    shape = _shape(info) if info else None
    if shape and len(shape) == 4 and shape[1] and shape[1] == shape[2] and shape[3] == 3:
        return shape[1]
    return None


def contract_problems(signature_defs: Mapping[str, meta_graph_pb2.SignatureDef],
                      labels: list[str]) -> list[str]:
    """Every way the signatures and labels differ from what catdog's clients rely on."""
    if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
        return [f"the labels asset assets/{contract.LABELS_FILE} holds {labels}: it must name "
                "two or more distinct classes, one a line"]
    image_size = image_size_of(signature_defs)
    if image_size is None:
        return [f"signature {contract.PREDICT_PIXELS} has no input {contract.PIXELS} of shape "
                "[-1, S, S, 3] (float32 RGB pixels)"]
    problems = []
    for key, (method, inputs, outputs) in expected_signatures(image_size, len(labels)).items():
        if key not in signature_defs:
            problems.append(f"signature {key} is missing (found {sorted(signature_defs)})")
            continue
        signature = signature_defs[key]
        if signature.method_name != method:
            problems.append(f"signature {key} has method {signature.method_name}, expected "
                            f"{method}")
        for kind, expected, found in (("input", inputs, signature.inputs),
                                      ("output", outputs, signature.outputs)):
            if set(found) != set(expected):
                problems.append(f"signature {key} has {kind}s {sorted(found)}, expected "
                                f"{sorted(expected)}")
                continue
            for alias, (dtype, shape) in expected.items():
                got = (found[alias].dtype, _shape(found[alias]))
                if got != (dtype, shape):
                    problems.append(
                        f"signature {key} {kind} {alias} is {_dtype_name(got[0])} {got[1]}, "
                        f"expected {_dtype_name(dtype)} {shape}")
    return problems


def _first_line(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return f"{type(error).__name__}: {text.strip().splitlines()[0][:300]}"


LABELS_ASSET = f"assets/{contract.LABELS_FILE}"
VARIABLES = "variables/variables"  # the prefix of a SavedModel's variables


def files_problem(candidate: Path) -> str | None:
    """What is wrong with the files a load needs, in words naming the file: a link to a file
    outside the folder (refused unread: nothing from outside is echoed), saved_model.pb that
    does not parse, variables missing or unreadable (every tensor is read once), no labels
    asset; None when they are whole."""
    candidate = Path(candidate)
    outside = next((path for path in sorted(candidate.rglob("*")) if path.is_symlink()
                    and not path.resolve().is_relative_to(candidate.resolve())), None)
    if outside is not None:
        return (f"{outside.relative_to(candidate)} is a link to a file outside the version "
                "folder; a version holds its own files (refused unread)")
    try:
        saved_model_pb2.SavedModel().ParseFromString((candidate / "saved_model.pb").read_bytes())
    except OSError as error:
        return f"saved_model.pb cannot be read: {error.strerror}"
    except message.DecodeError:
        return "saved_model.pb is not a SavedModel (it does not parse as one)"
    index = candidate / f"{VARIABLES}.index"
    shards = sorted(p.name for p in (candidate / "variables").glob("variables.data-*"))
    if not index.is_file():
        return f"{VARIABLES}.index is missing: the variables cannot be found"
    if not shards:
        return f"{VARIABLES}.data-* is missing: the variables' values are not there"
    try:
        reader = tf.train.load_checkpoint(str(candidate / VARIABLES))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as error:  # TensorFlow's reader: DataLossError, OutOfRange, IndexError...
        named = ", ".join(f"variables/{shard}" for shard in shards)
        return f"{named} is damaged or truncated ({_first_line(error)})"
    if not (candidate / LABELS_ASSET).is_file():
        return (f"{LABELS_ASSET} is missing: the labels asset names the classes, one a line "
                "(catdog's exporter writes it)")
    return None


def validate(candidate: str | Path, image_file: str | Path) -> dict[str, Any]:
    """Steps 1–4 of the module docstring; the report as a JSON-ready dict."""
    candidate = Path(candidate)
    problem = graph_ops.op_problem(candidate) or files_problem(candidate)
    if problem:
        return {"ok": False, "failure": problem}
    try:
        labels = (candidate / LABELS_ASSET).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        return {"ok": False, "failure": f"{LABELS_ASSET} cannot be read: {error}"}
    try:
        servable = Servable(contract.DEFAULT_MODEL_NAME, 0, candidate)
    except Exception as error:  # whatever TensorFlow's loader raises, reported in one line
        return {"ok": False, "failure": f"cannot load it as a servable: {_first_line(error)}"}
    try:
        problems = contract_problems(servable.signature_defs, labels)
        if problems:
            return {"ok": False, "failure": f"wrong signature contract: {'; '.join(problems)}"}
        try:
            warmed = servable.warm_up()
        except Exception as error:
            return {"ok": False, "failure": f"a warm-up request of {contract.WARMUP_FILE} "
                                            f"failed: {_first_line(error)}"}
        try:
            answers, classes = _answers(servable, Path(image_file),
                                        image_size_of(servable.signature_defs))
        except Exception as error:
            return {"ok": False, "failure": f"a request with {image_file} failed: "
                                            f"{_first_line(error)}"}
        return {"ok": True, "labels": labels, "warmup_requests": warmed, "answers": answers,
                "classes": classes}
    finally:
        servable.close()


def _answers(servable: Servable, image_file: Path, image_size: int
             ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Probabilities for the image from each signature, and the class names each answered."""
    encoded = image_file.read_bytes()
    pixels = tf.cast(images.load_image(tf.constant(str(image_file)), image_size),
                     tf.float32).numpy()[None]
    from_bytes = servable.predict(contract.SERVING_DEFAULT,
                                  {contract.IMAGE_BYTES: np.array([encoded], object)})
    from_pixels = servable.predict(contract.PREDICT_PIXELS, {contract.PIXELS: pixels})
    classified = servable.classify(contract.CLASSIFY, input_pb2.Input(
        example_list=input_pb2.ExampleList(examples=[images.image_example(encoded)])))
    classify_scores = [c.score for c in classified.classifications[0].classes]
    answers = {contract.SERVING_DEFAULT: from_bytes[contract.PROBABILITIES][0].tolist(),
               contract.PREDICT_PIXELS: from_pixels[contract.PROBABILITIES][0].tolist(),
               contract.CLASSIFY: classify_scores}
    classes = {contract.SERVING_DEFAULT: from_bytes[contract.CLASSES][0].decode(),
               contract.PREDICT_PIXELS: from_pixels[contract.CLASSES][0].decode(),
               contract.CLASSIFY: [c.label for c in classified.classifications[0].classes]}
    return answers, classes


def _end_with_the_parent() -> None:
    """Linux: this process is killed when the gate that started it dies (a SIGKILLed publish
    leaves no validator running on)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call
        sys.exit(1)


def main(argv: list[str]) -> int:
    _end_with_the_parent()
    if len(argv) != 3:
        print(json.dumps({"ok": False, "failure": "usage: python -m "
                          "catdog.serving.infra_validation CANDIDATE_DIR IMAGE_FILE"}))
        return 2
    report = validate(argv[1], argv[2])
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
