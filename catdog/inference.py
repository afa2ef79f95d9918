"""Reads an export back for inference: the `.h5` file or a SavedModel version folder.

`evaluate` and `predict` take either; both give the same probabilities for the same pixels, and
both carry the class names the model was trained with (the `.h5` as a file attribute, the
SavedModel as its labels asset).
"""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: a library import starts TensorFlow quietly too)

# isort: split
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from catdog import config as config_lib
from catdog import contract, distribute, versions
from catdog import model as model_lib
from catdog.errors import CatdogError


def load_h5(path: str | os.PathLike) -> tuple[keras.Model, list[str]]:
    """The model and class names written by `export_h5`. A file holding Python code (a Keras
    `Lambda` layer's function), which Keras' safe mode will not load, is refused in one line."""
    try:
        model = keras.models.load_model(path, compile=False)
    except ValueError as error:
        if "safe_mode" not in str(error):
            raise
        raise CatdogError(f"{path} holds a Keras Lambda layer's Python code, which Keras will "
                          "not load from a file (safe mode); catdog's .h5 exports hold none, "
                          "so this is not one of them") from None
    with h5py.File(path, "r") as f:
        class_names = json.loads(f.attrs[contract.H5_CLASS_NAMES_ATTR])
    return model, class_names


def load_keras_model(path: str | os.PathLike) -> tuple[keras.Model, list[str]]:
    """The Keras classifier of either export, with its class names: the `.h5` as it loads; a
    SavedModel version rebuilt from catdog's architecture (`model.build_classifier`) with the
    version's own variables, matched by layer and weight name from its `predict_pixels`
    signature (a SavedModel answers probabilities only; Grad-CAM needs the layers)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".h5":
        return load_h5(path)
    loaded = _load_saved_model(path)
    signature = loaded.signatures[contract.PREDICT_PIXELS]
    class_names = labels_of(path)
    image_size = signature.structured_input_signature[1][contract.PIXELS].shape[1]
    stored = {variable.name.removesuffix(":0"): variable for variable in signature.variables}
    model = model_lib.build_classifier(len(class_names), image_size, "none")
    for weight in _all_weights(model):
        if weight.path not in stored:
            raise CatdogError(f"{path} has no variable {weight.path}: it is not a catdog export "
                              "that can be rebuilt as a Keras model")
        weight.assign(stored[weight.path].numpy())
    return model, class_names


def _all_weights(model: keras.Model) -> list[keras.Variable]:
    """Every weight, frozen or not, with its layer-qualified path ('block1_conv1/kernel')."""
    return [w for layer in model.layers for w in (
        _all_weights(layer) if isinstance(layer, keras.Model) else layer.weights)]


def _load_saved_model(path: Path):
    if not (path / "saved_model.pb").is_file():
        raise CatdogError(f"--model={path} is neither a .h5 file nor a SavedModel version folder "
                          "(one holding saved_model.pb, e.g. export/catdog/1)")
    return tf.saved_model.load(str(path))


def labels_of(path: Path) -> list[str]:
    """The class names a SavedModel version folder's labels asset gives."""
    return (path / "assets" / contract.LABELS_FILE).read_text().splitlines()


def source_of(path: str | os.PathLike) -> dict:
    """What the exporter recorded of the run behind either export ({} when nothing)."""
    path = Path(path)
    if path.suffix != ".h5":
        return versions.source_of(path)
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs.get(contract.H5_SOURCE_ATTR, "{}"))
    except (OSError, ValueError):
        return {}


def flips(path: str | os.PathLike) -> bool:
    """Whether the export at `path` answers with test-time flips (--test_time_flip): its
    SavedModel's signatures do it in the graph, and catdog does it for its .h5."""
    return bool(source_of(path).get(contract.SOURCE_TEST_TIME_FLIP))


def identity_of(path: str | os.PathLike) -> dict[str, str]:
    """What an export says about itself: its path, its version (a SavedModel version folder's
    number), the run and epoch it came from, the precision it computes in and its image size
    (the record export.py writes into both)."""
    path = Path(path)
    source = source_of(path)
    run = (f"{source['run_dir']}, epoch {source['epoch']} of {source['finished_epochs']}"
           if {"run_dir", "epoch", "finished_epochs"} <= set(source) else "not recorded")
    if path.parent.parent.name == contract.CANDIDATES_DIR:
        version = f"candidate {path.name}"
    else:
        version = path.name if path.name.isdigit() else "-"
    return {"path": str(path), "version": version, "source": run,
            "precision": source.get("precision", "float32"),
            "image_size": source.get("image_size", "")}


def answer_record(path: str, class_names: Sequence[str], probabilities: np.ndarray
                  ) -> dict[str, Any]:
    """One photo's answer as `predict --format=jsonl` and `batch` write it: path, label,
    probability (the label's), and every class's probability."""
    best = int(np.argmax(probabilities))
    return {"path": path, "label": class_names[best], "probability": float(probabilities[best]),
            "probabilities": dict(zip(class_names, map(float, probabilities)))}


@dataclasses.dataclass(frozen=True)
class Classifier:
    """An exported model ready for inference, whichever format it was loaded from."""

    predict: Callable[[np.ndarray], np.ndarray]  # float32 pixels [N, S, S, 3] → probabilities
    class_names: list[str]
    image_size: int
    precision: str = "float32"  # the Keras policy it computes in (a SavedModel: as exported)


def resolve_precision(requested: str, model_path: str | os.PathLike = "") -> str:
    """--mixed_precision for inference: 'export' the precision `model_path`'s export records
    (float32 when it records none), 'auto' resolved as training resolves it (bfloat16 on a CPU
    that computes it natively)."""
    if requested == config_lib.AS_EXPORTED:
        policy = source_of(model_path).get("precision", "float32") if model_path else "float32"
        logging.info("precision %s (as the export records it)", policy)
        return policy
    policy, reason = distribute.resolve_precision(
        requested, tf.config.list_physical_devices("GPU"), distribute.cpu_flags())
    logging.info("precision %s (%s)", policy, reason)
    return policy


def keras_classifier(model: keras.Model, class_names: Sequence[str],
                     precision: str = "float32") -> Classifier:
    """A Keras model in memory as a Classifier (called with training=False)."""
    forward = tf.function(lambda pixels: model(pixels, training=False))
    return Classifier(lambda pixels: forward(tf.constant(pixels, tf.float32)).numpy(),
                      list(class_names), model.input_shape[1], precision)


def with_test_time_flip(classifier: Classifier) -> Classifier:
    """The classifier answering each image with the mean of its answers for the image and for
    its left-right mirror: what a --test_time_flip export's signatures compute, and what
    `evaluate --test_time_flip` asks of any model (a second forward pass per image)."""
    def predict(pixels: np.ndarray) -> np.ndarray:
        return (classifier.predict(pixels) + classifier.predict(pixels[:, :, ::-1])) / 2

    return dataclasses.replace(classifier, predict=predict)


def load_classifier(path: str | os.PathLike, precision: str = "float32") -> Classifier:
    """Loads the `.h5` file (computing under the Keras policy `precision`) or a SavedModel
    version folder (through its `predict_pixels` signature, in the precision it was exported
    in); in float32 both give the same probabilities for the same pixels, with test-time flips
    when the export records them."""
    path = Path(path)
    if path.is_file() and path.suffix == ".h5":
        model, class_names = load_h5(path)
        classifier = keras_classifier(model_lib.in_policy(model, precision), class_names,
                                      precision)
        return with_test_time_flip(classifier) if flips(path) else classifier
    signature = _load_saved_model(path).signatures[contract.PREDICT_PIXELS]
    image_size = signature.structured_input_signature[1][contract.PIXELS].shape[1]
    return Classifier(
        lambda pixels: signature(pixels=tf.constant(pixels, tf.float32))[
            contract.PROBABILITIES].numpy(), labels_of(path), image_size,
        versions.source_of(path).get("precision", "float32"))
