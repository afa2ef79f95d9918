"""Writes a trained classifier twice: a Keras `.h5` file and a versioned SavedModel for TF Serving.

A training run writes a *candidate* (`<export_dir>/candidates/<model_name>/<K>/` and `<K>.h5`
beside it); only the gate (`catdog/publish.py`) moves it to where TF Serving looks. `versions.py`
names every place (`Layout`) and owns the version folders; the SavedModel's signatures, labels and
warm-up are `catdog/signatures.py`'s.

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
import tensorflow as tf
from absl import logging

from catdog import atomic, contract, images, signatures, versions
from catdog.errors import CatdogError
from catdog.faults import crash_point


@dataclasses.dataclass(frozen=True)
class Exports:
    """Where one export put its two artefacts."""

    h5: Path
    saved_model: Path


def export_h5(model: keras.Model, class_names: Sequence[str], path: Path,
              source: dict | None = None) -> Path:
    """Saves `model` as `.h5` with the class names (and the run it came from) stored as HDF5
    attributes of the file."""
    with atomic.atomic_file(path) as tmp:
        model.save(tmp)
        with h5py.File(tmp, "a") as f:
            f.attrs[contract.H5_CLASS_NAMES_ATTR] = json.dumps(list(class_names))
            if source:
                f.attrs[contract.H5_SOURCE_ATTR] = json.dumps(source)
        crash_point("export.h5_written")
    return path


def export_saved_model(model: keras.Model, class_names: Sequence[str], base: Path,
                       keep_versions: int = 0,
                       max_image_pixels: int = images.MAX_IMAGE_PIXELS,
                       source: dict | None = None, model_name: str = "") -> Path:
    """Writes the next version folder `base/<N>/` (TF Serving model name: `model_name`, else
    `base.name`), then prunes all but the newest `keep_versions` (0 keeps all); returns the new
    folder.

    `source` describes the trained state being exported (run folder, epoch, data, and whether
    its signatures answer with test-time flips); when the newest version already holds that
    state (a run killed after its export, started again), it is returned instead of writing an
    identical new version."""
    atomic.remove_leftovers(base)
    newest = versions.newest(base)
    if source and newest and _same_state(versions.source_of(newest), source):
        logging.info("%s already holds this model (%s)", newest, source)
        return newest
    final = base / str(versions.next_number(base))
    with atomic.atomic_dir(final) as tmp:
        with tempfile.TemporaryDirectory() as labels_dir:
            labels = signatures.write_labels(Path(labels_dir), class_names)
            try:
                signatures.serving_archive(model, labels, max_image_pixels, bool(
                    (source or {}).get(contract.SOURCE_TEST_TIME_FLIP))).write_out(
                    str(tmp), verbose=False)
            except tf.errors.OpError as error:  # TensorFlow's own writes (the variables)
                cause = error.message.strip().splitlines()[0].split("; ")[-1]
                raise CatdogError(f"cannot write {final}: "
                                  f"{cause.split(' [Op:')[0]}") from None
        signatures.mark_classify_method(tmp)
        signatures.write_warmup_requests(tmp, model_name or base.name, model.input_shape[1])
        if source:
            (tmp / contract.SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        crash_point("export.saved_model_written")
    if keep_versions:
        versions.prune(base, keep_versions)
    return final


def export_all(model: keras.Model, class_names: Sequence[str], export_dir: str | os.PathLike,
               model_name: str, keep_versions: int = 0,
               max_image_pixels: int = images.MAX_IMAGE_PIXELS) -> Exports:
    """Writes `<export_dir>/<model_name>.h5` and a new `<export_dir>/<model_name>/<N>/` straight
    into the served layout, without the gate (tests and notebooks; training uses
    `export_candidate` and `catdog.publish`)."""
    layout = versions.Layout(Path(export_dir), model_name)
    atomic.remove_leftovers(layout.export_dir)  # a killed export's half-written .h5
    return Exports(
        h5=export_h5(model, class_names, layout.h5),
        saved_model=export_saved_model(model, class_names, layout.base, keep_versions,
                                       max_image_pixels))


MEASURED = ("precision_choice",)  # a source's figures measured at export, different each time


def _same_state(recorded: dict, source: dict) -> bool:
    """Whether two export records describe the same trained state (measurements aside)."""
    return ({k: v for k, v in recorded.items() if k not in MEASURED}
            == {k: v for k, v in source.items() if k not in MEASURED})


def export_candidate(model: keras.Model, class_names: Sequence[str],
                     layout: versions.Layout,
                     max_image_pixels: int = images.MAX_IMAGE_PIXELS,
                     source: dict | None = None) -> Exports:
    """Writes a candidate: `<candidates>/<K>/` (a SavedModel for `layout.model_name`) and
    `<K>.h5` beside it, outside TF Serving's base path; the gate publishes it. A candidate
    already holding `source` (a run killed after its export, started again) is returned as it
    is, whether it is still a candidate or already published. The export folder's lock is held
    meanwhile, so two runs never take the same candidate number."""
    with layout.holding_lock(versions.WRITER_WAIT_SECONDS):
        return _export_candidate(model, class_names, layout, max_image_pixels, source)


def _export_candidate(model: keras.Model, class_names: Sequence[str],
                      layout: versions.Layout,
                      max_image_pixels: int, source: dict | None) -> Exports:
    published = versions.newest(layout.base)
    if source and published and versions.source_of(published) == source:
        logging.info("%s already holds this model", published)
        return Exports(h5=layout.h5, saved_model=published)
    saved_model = export_saved_model(model, class_names, layout.candidates,
                                     max_image_pixels=max_image_pixels, source=source,
                                     model_name=layout.model_name)
    h5 = versions.candidate_h5(saved_model)
    crash_point("export.saved_model_renamed")
    if not h5.exists():  # a candidate written by a run killed before its .h5
        export_h5(model, class_names, h5, source)
    return Exports(h5=h5, saved_model=saved_model)
