"""Writes a trained classifier twice: a Keras `.h5` file and a versioned SavedModel for TF Serving.

    <export_dir>/<model_name>.h5        plain keras.models.load_model (only built-in layers)
    <export_dir>/<model_name>/<N>/      tf.saved_model.load / TF Serving, N = next free integer
                                        (signatures, labels and warm-up: catdog/signatures.py)

Every file and folder appears atomically: it is written under a temporary sibling name and
renamed into place when complete, so a reader (TF Serving polls the base path) never sees half of
one, and a failed export leaves the previous ones untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from catdog import atomic, contract, images, signatures
from catdog.errors import CatdogError

CLASS_NAMES_ATTR = contract.H5_CLASS_NAMES_ATTR
_SOURCE_FILE = "assets.extra/catdog_source"  # which run and epoch a version was exported from


@dataclasses.dataclass(frozen=True)
class Exports:
    """Where one export put its two artefacts."""

    h5: Path
    saved_model: Path


def export_h5(model: keras.Model, class_names: Sequence[str], path: Path) -> Path:
    """Saves `model` as `.h5` with the class names stored as an HDF5 attribute of the file."""
    with atomic.atomic_file(path) as tmp:
        model.save(tmp)
        with h5py.File(tmp, "a") as f:
            f.attrs[CLASS_NAMES_ATTR] = json.dumps(list(class_names))
    return path


def load_h5(path: str | os.PathLike) -> tuple[keras.Model, list[str]]:
    """The model and class names written by `export_h5`."""
    model = keras.models.load_model(path, compile=False)
    with h5py.File(path, "r") as f:
        class_names = json.loads(f.attrs[CLASS_NAMES_ATTR])
    return model, class_names


def next_version(base: Path) -> int:
    """One more than the highest integer-named version folder under `base` (1 if none)."""
    newest = _newest_version(base)
    return int(newest.name) + 1 if newest else 1


def export_saved_model(model: keras.Model, class_names: Sequence[str], base: Path,
                       keep_versions: int = 0,
                       max_image_pixels: int = images.MAX_IMAGE_PIXELS, source: str = "") -> Path:
    """Writes the next version folder `base/<N>/` (TF Serving model name: `base.name`), then
    prunes all but the newest `keep_versions` (0 keeps all); returns the new folder.

    `source` names the trained state being exported (run folder and epoch); when the newest
    version already holds that state (a run killed after its export, started again), it is
    returned instead of writing an identical new version."""
    atomic.remove_leftovers(base)
    newest = _newest_version(base)
    if source and newest and _source_of(newest) == source:
        logging.info("%s already holds this model (%s)", newest, source)
        return newest
    final = base / str(next_version(base))
    with atomic.atomic_dir(final) as tmp:
        with tempfile.TemporaryDirectory() as labels_dir:
            labels = signatures.write_labels(Path(labels_dir), class_names)
            signatures.serving_archive(model, labels, max_image_pixels).write_out(
                str(tmp), verbose=False)
        signatures.mark_classify_method(tmp)
        signatures.write_warmup_requests(tmp, base.name, model.input_shape[1])
        if source:
            (tmp / _SOURCE_FILE).write_text(source)
    if keep_versions:
        prune_versions(base, keep_versions)
    return final


def _newest_version(base: Path) -> Path | None:
    versions = [p for p in base.iterdir() if p.name.isdigit()] if base.is_dir() else []
    return max(versions, key=lambda p: int(p.name), default=None)


def _source_of(version: Path) -> str:
    try:
        return (version / _SOURCE_FILE).read_text()
    except OSError:
        return ""


def prune_versions(base: Path, keep: int) -> list[Path]:
    """Removes all but the newest `keep` version folders; each vanishes at once (renamed to a
    hidden name first), so TF Serving never sees a half-deleted version. Returns those removed."""
    versions = sorted((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    removed = versions[:-keep] if keep else []
    for version in removed:
        atomic.remove_dir(version)
    return removed


def export_all(model: keras.Model, class_names: Sequence[str], export_dir: str | os.PathLike,
               model_name: str, keep_versions: int = 0,
               max_image_pixels: int = images.MAX_IMAGE_PIXELS, source: str = "") -> Exports:
    """Writes `<export_dir>/<model_name>.h5` and a new `<export_dir>/<model_name>/<N>/`."""
    export_dir = Path(export_dir)
    atomic.remove_leftovers(export_dir)  # a killed export's half-written .h5
    return Exports(
        h5=export_h5(model, class_names, export_dir / f"{model_name}.h5"),
        saved_model=export_saved_model(model, class_names, export_dir / model_name,
                                       keep_versions, max_image_pixels, source))


@dataclasses.dataclass(frozen=True)
class Classifier:
    """An exported model ready for inference, whichever format it was loaded from."""

    predict: Callable[[np.ndarray], np.ndarray]  # float32 pixels [N, S, S, 3] → probabilities
    class_names: list[str]
    image_size: int


def load_classifier(path: str | os.PathLike) -> Classifier:
    """Loads the `.h5` file or a SavedModel version folder (through its `predict_pixels`
    signature); both give the same probabilities for the same pixels."""
    path = Path(path)
    if path.is_file() and path.suffix == ".h5":
        model, class_names = load_h5(path)
        forward = tf.function(lambda pixels: model(pixels, training=False))
        return Classifier(lambda pixels: forward(tf.constant(pixels, tf.float32)).numpy(),
                          class_names, model.input_shape[1])
    if (path / "saved_model.pb").is_file():
        signature = tf.saved_model.load(str(path)).signatures[contract.PREDICT_PIXELS]
        class_names = (path / "assets" / contract.LABELS_FILE).read_text().splitlines()
        image_size = signature.structured_input_signature[1][contract.PIXELS].shape[1]
        return Classifier(
            lambda pixels: signature(pixels=tf.constant(pixels, tf.float32))[
                contract.PROBABILITIES].numpy(), class_names, image_size)
    raise CatdogError(f"--model={path} is neither a .h5 file nor a SavedModel version folder "
                      "(one holding saved_model.pb, e.g. export/catdog/1)")
