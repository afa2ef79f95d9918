"""Writes a trained classifier twice: a Keras `.h5` file and a versioned SavedModel for TF Serving.

    <export_dir>/<model_name>.h5        plain keras.models.load_model (only built-in layers)
    <export_dir>/<model_name>/<N>/      tf.saved_model.load / TF Serving, N = next free integer
                                        (signatures, labels and warm-up: catdog/signatures.py)

Every file and folder appears atomically: it is written under a temporary sibling name and
renamed into place when complete, so a reader (TF Serving polls the base path) never sees half of
one, and a failed export leaves the previous ones untouched. `inference.py` reads them back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import h5py
import keras
from absl import logging

from catdog import atomic, contract, images, signatures

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
            f.attrs[contract.H5_CLASS_NAMES_ATTR] = json.dumps(list(class_names))
    return path


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
