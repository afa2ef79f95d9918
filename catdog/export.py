"""Writes a trained classifier twice: a Keras `.h5` file and a versioned SavedModel for TF Serving.

A training run writes a *candidate*; only the gate (`catdog/publish.py`) moves it to where TF
Serving looks (`Layout` names every place):

    <export_dir>/<model_name>.h5                  the published .h5 (plain keras.models.load_model)
    <export_dir>/<model_name>/<N>/                published SavedModel versions: TF Serving's
                                                  base path (signatures, labels and warm-up:
                                                  catdog/signatures.py)
    <export_dir>/candidates/<model_name>/<K>/     a run's SavedModel candidate, K = next free
    <export_dir>/candidates/<model_name>/<K>.h5   integer, and its .h5 beside it

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

from catdog import atomic, contract, images, signatures
from catdog.errors import CatdogError


@dataclasses.dataclass(frozen=True)
class Exports:
    """Where one export put its two artefacts."""

    h5: Path
    saved_model: Path


@dataclasses.dataclass(frozen=True)
class Layout:
    """The places of one model's exports under an export folder (module docstring)."""

    export_dir: Path
    model_name: str

    @classmethod
    def of_base_path(cls, base: str | os.PathLike) -> Layout:
        """The layout whose TF Serving base path is `base` (`<export_dir>/<model_name>`)."""
        base = Path(base).absolute()
        return cls(base.parent, base.name)

    @property
    def base(self) -> Path:
        return Path(self.export_dir) / self.model_name

    @property
    def h5(self) -> Path:
        return Path(self.export_dir) / f"{self.model_name}.h5"

    @property
    def candidates(self) -> Path:
        return Path(self.export_dir) / contract.CANDIDATES_DIR / self.model_name

    @property
    def lock(self) -> Path:
        """Held by whoever writes a candidate or publishes into `base` (catdog/publish.py)."""
        return Path(self.export_dir) / f".{self.model_name}.publish.lock"


def candidate_h5(saved_model: Path) -> Path:
    """The .h5 beside a candidate folder `<K>/`: `<K>.h5`."""
    return saved_model.parent / f"{saved_model.name}.h5"


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
    return path


def next_version(base: Path) -> int:
    """One more than the highest integer-named version folder, or candidate `.h5` file (whose
    folder may have been published), under `base`; 1 if none."""
    names = [p.name.removesuffix(".h5") for p in base.iterdir()] if base.is_dir() else []
    return max((int(n) for n in names if n.isdigit()), default=0) + 1


def export_saved_model(model: keras.Model, class_names: Sequence[str], base: Path,
                       keep_versions: int = 0,
                       max_image_pixels: int = images.MAX_IMAGE_PIXELS,
                       source: dict | None = None, model_name: str = "") -> Path:
    """Writes the next version folder `base/<N>/` (TF Serving model name: `model_name`, else
    `base.name`), then prunes all but the newest `keep_versions` (0 keeps all); returns the new
    folder.

    `source` describes the trained state being exported (run folder, epoch, data); when the
    newest version already holds that state (a run killed after its export, started again), it
    is returned instead of writing an identical new version."""
    atomic.remove_leftovers(base)
    newest = _newest_version(base)
    if source and newest and source_of(newest) == source:
        logging.info("%s already holds this model (%s)", newest, source)
        return newest
    final = base / str(next_version(base))
    with atomic.atomic_dir(final) as tmp:
        with tempfile.TemporaryDirectory() as labels_dir:
            labels = signatures.write_labels(Path(labels_dir), class_names)
            try:
                signatures.serving_archive(model, labels, max_image_pixels).write_out(
                    str(tmp), verbose=False)
            except tf.errors.OpError as error:  # TensorFlow's own writes (the variables)
                cause = error.message.strip().splitlines()[0].split("; ")[-1]
                raise CatdogError(f"cannot write {final}: "
                                  f"{cause.split(' [Op:')[0]}") from None
        signatures.mark_classify_method(tmp)
        signatures.write_warmup_requests(tmp, model_name or base.name, model.input_shape[1])
        if source:
            (tmp / contract.SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    if keep_versions:
        prune_versions(base, keep_versions)
    return final


def versions(base: Path) -> list[Path]:
    """The integer-named version folders under `base`, newest first (TF Serving ignores other
    names)."""
    found = [p for p in base.iterdir() if p.name.isdigit()] if base.is_dir() else []
    return sorted(found, key=lambda p: int(p.name), reverse=True)


def _newest_version(base: Path) -> Path | None:
    return next(iter(versions(base)), None)


def source_of(version: Path) -> dict:
    """What `export_saved_model` recorded of the run behind a version ({} when nothing)."""
    try:
        return json.loads((version / contract.SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def prune_versions(base: Path, keep: int) -> list[Path]:
    """Removes all but the newest `keep` version folders; each vanishes at once (renamed to a
    hidden name first), so TF Serving never sees a half-deleted version. Returns those removed."""
    removed = versions(base)[keep:] if keep else []
    for version in removed:
        atomic.remove_dir(version)
    return removed


def export_all(model: keras.Model, class_names: Sequence[str], export_dir: str | os.PathLike,
               model_name: str, keep_versions: int = 0,
               max_image_pixels: int = images.MAX_IMAGE_PIXELS) -> Exports:
    """Writes `<export_dir>/<model_name>.h5` and a new `<export_dir>/<model_name>/<N>/` straight
    into the served layout, without the gate (tests and notebooks; training uses
    `export_candidate` and `catdog.publish`)."""
    layout = Layout(Path(export_dir), model_name)
    atomic.remove_leftovers(layout.export_dir)  # a killed export's half-written .h5
    return Exports(
        h5=export_h5(model, class_names, layout.h5),
        saved_model=export_saved_model(model, class_names, layout.base, keep_versions,
                                       max_image_pixels))


def export_candidate(model: keras.Model, class_names: Sequence[str], layout: Layout,
                     max_image_pixels: int = images.MAX_IMAGE_PIXELS,
                     source: dict | None = None) -> Exports:
    """Writes a candidate: `<candidates>/<K>/` (a SavedModel for `layout.model_name`) and
    `<K>.h5` beside it, outside TF Serving's base path; the gate publishes it. A candidate
    already holding `source` (a run killed after its export, started again) is returned as it
    is, whether it is still a candidate or already published. The export folder's lock is held
    meanwhile, so two runs never take the same candidate number."""
    with atomic.exclusive(layout.lock, f"the export folder {layout.export_dir}"):
        return _export_candidate(model, class_names, layout, max_image_pixels, source)


def _export_candidate(model: keras.Model, class_names: Sequence[str], layout: Layout,
                      max_image_pixels: int, source: dict | None) -> Exports:
    if source and source_of(_newest_version(layout.base) or layout.base) == source:
        logging.info("%s already holds this model", _newest_version(layout.base))
        return Exports(h5=layout.h5, saved_model=_newest_version(layout.base))
    saved_model = export_saved_model(model, class_names, layout.candidates,
                                     max_image_pixels=max_image_pixels, source=source,
                                     model_name=layout.model_name)
    h5 = candidate_h5(saved_model)
    if not h5.exists():  # a candidate written by a run killed before its .h5
        export_h5(model, class_names, h5, source)
    return Exports(h5=h5, saved_model=saved_model)
