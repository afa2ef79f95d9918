"""The evaluator: a model and photos in, answers and figures out; it writes nothing.

Which photos judge a model (`Photos`: the evaluation photos that chose nothing, or the selection
photos, said so), the model's answers for them (`predict_files`), its figures with their
intervals (`model_result`, from `figures.py`), the comparison of two models on the same photos,
and the Grad-CAM heat maps of its worst mistakes. `report.py` renders what this computes,
`publish.py` decides with it, and `evaluate.py` is the command over both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from catdog import data, figures, gradcam, images, inference, versions
from catdog.config import DEFAULT_EVALUATION_SPLIT
from catdog.errors import CatdogError, first_line
from catdog.terminal import ProgressLine

EVALUATION, SELECTION = "evaluation", "selection"  # the roles photos can judge a model in
MAX_SHOWN = 64  # misclassified photos shown in the reports, most confidently wrong first


@dataclasses.dataclass(frozen=True)
class Photos:
    """The photos a model is judged on, where they came from, and their role: EVALUATION when
    they chose nothing, SELECTION when they also chose the model (its figures are then
    optimistic)."""

    files: data.ImageFiles
    source: str
    role: str = EVALUATION
    skipped: tuple[data.BadImage, ...] = ()
    folder: str = ""  # the data folder `source` names first (report.html shows paths from it)

    def describe(self) -> str:
        """How the screen, gate.json and report.html name these photos."""
        role = ("evaluation photos, which chose nothing" if self.role == EVALUATION else
                "SELECTION photos, which also chose the model: its figures on them are "
                "optimistic")
        return f"{len(self.files)} photos from {self.source} ({role})"


def photo_set(files: data.ImageFiles) -> str:
    """A digest naming these photos as they are now: their classes, labels and paths with each
    file's size and modification time (prepared shards: the shards' digest and positions). A
    changed photo, label or order is another photo set."""
    if files.shards:
        stamps: Any = [files.fingerprint, list(files.positions)]
    else:
        stamps = [[path, *_size_and_mtime(path)] for path in files.paths]
    text = json.dumps([list(files.class_names), list(files.labels), stamps])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _size_and_mtime(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


# --- which photos ------------------------------------------------------------------------------

def checked_files(data_dir: str, class_names: Sequence[str],
                  max_pixels: int = images.MAX_IMAGE_PIXELS
                  ) -> tuple[data.ImageFiles, list[data.BadImage]]:
    """The decodable image files of a class-folder dataset whose classes are `class_names`, and
    the files left out, each logged with the reason."""
    folder_classes = data.class_names_in(data_dir)
    if list(folder_classes) != list(class_names):
        raise CatdogError(f"--data_dir={data_dir} has classes {list(folder_classes)} but the "
                          f"model knows {list(class_names)}")
    return without_bad_images(data.list_images(data_dir, class_names), max_pixels)


def without_bad_images(files: data.ImageFiles, max_pixels: int = images.MAX_IMAGE_PIXELS
                       ) -> tuple[data.ImageFiles, list[data.BadImage]]:
    """`files` less those that cannot be decoded (or were never readable), which are returned
    and logged with the reason."""
    if files.shards:  # checked when they were prepared
        return files, []
    bad = list(files.skipped) + data.check_images(files.paths, max_pixels)
    for item in bad:
        logging.warning("skipping %s: %s", item.path, item.reason)
    return files.without({item.path for item in bad}), bad


def _role(files: data.ImageFiles, chose: Iterable[str]) -> str:
    """SELECTION when any of `files` is among the photos that trained or selected the model."""
    chose = {os.path.realpath(path) for path in chose}
    return SELECTION if any(os.path.realpath(p) in chose for p in files.paths) else EVALUATION


def run_photos(splits: data.Splits, data_dir: str) -> Photos:
    """The photos a training run's gate judges on: its evaluation photos, or, when it kept none,
    its selection photos (said so)."""
    if splits.evaluation is not None:
        return Photos(splits.evaluation, f"{data_dir} ({splits.evaluation_source})",
                      folder=str(data_dir))
    return Photos(splits.validation, f"{data_dir} (the validation photos that chose the best "
                  "epoch: --evaluation_split=0 and no test/ folder)", SELECTION,
                  folder=str(data_dir))


def folder_photos(data_dir: str, class_names: Sequence[str], image_size: int,
                  evaluation_split: float, chose: Iterable[str] = (),
                  max_pixels: int = images.MAX_IMAGE_PIXELS) -> Photos:
    """The photos of `data_dir` to judge on: a dataset folder's evaluation photos (its test/
    split, else its `evaluation_split` of validation photos (`data.assign_roles`), else its
    validation photos), or a folder of class sub-folders itself. SELECTION when any of them is
    among `chose`, the photos that trained or selected the model."""
    folder = Path(data_dir)
    if data.is_prepared(folder) or ((folder / "train").is_dir()
                                    and (folder / "validation").is_dir()):
        _, roles = data.find_roles(folder, 0.0, evaluation_split, 0, image_size)
        files = roles.evaluation if roles.evaluation is not None else roles.selection
        source = (f"{folder} ({roles.evaluation_source})" if roles.evaluation is not None
                  else f"{folder} (its validation photos)")
        if list(files.class_names) != list(class_names):
            raise CatdogError(f"{folder} has classes {list(files.class_names)} but the model "
                              f"knows {list(class_names)}")
        files, bad = without_bad_images(files, max_pixels)
    else:
        files, bad = checked_files(str(folder), class_names, max_pixels)
        source = str(folder)
    return Photos(files, source, _role(files, chose), tuple(bad), str(folder))


def recorded_photos(source: dict[str, Any], max_pixels: int = images.MAX_IMAGE_PIXELS
                    ) -> Photos:
    """The evaluation photos of the run a candidate came from, found again from what its export
    recorded (data folder, splits, seed); its selection photos, said so, when it kept none."""
    try:
        data_dir, seed = source["data_dir"], source["seed"]
        train, roles = data.find_roles(data_dir, source["validation_split"],
                                       source.get("evaluation_split", 0.0), seed,
                                       source["image_size"])
    except KeyError:
        raise CatdogError("the candidate does not record the photos its run validated on; "
                          "pass --data_dir") from None
    splits = data.Splits(train, roles.selection, (), roles.evaluation, roles.evaluation_source)
    photos = run_photos(splits, data_dir)
    files, bad = without_bad_images(photos.files, max_pixels)
    return dataclasses.replace(photos, files=files, skipped=tuple(bad))


def photos_to_judge(source: dict[str, Any], data_dir: str, class_names: Sequence[str],
                    image_size: int, max_pixels: int = images.MAX_IMAGE_PIXELS) -> Photos:
    """The photos `catdog.publish` and `catdog.evaluate` judge an export on: those of
    `data_dir` (a dataset folder's evaluation photos, the ones every run with the export's
    --evaluation_split keeps apart, or a folder of class sub-folders: `folder_photos`), else
    the evaluation photos of the run its export records (`source`); in the model's classes."""
    if data_dir:
        split = source.get("evaluation_split", DEFAULT_EVALUATION_SPLIT)
        photos = folder_photos(data_dir, class_names, image_size, split,
                               recorded_chosen(source), max_pixels)
    else:
        photos = recorded_photos(source, max_pixels)
    if list(photos.files.class_names) != list(class_names):
        raise CatdogError(f"{photos.source} has classes {list(photos.files.class_names)} but the "
                          f"candidate knows {list(class_names)}")
    return photos


def chosen_by(splits: data.Splits) -> tuple[str, ...]:
    """The photos that trained or selected a run's model."""
    return splits.train.paths + splits.validation.paths


def recorded_chosen(source: dict[str, Any]) -> tuple[str, ...]:
    """The photos that trained or selected the run a candidate's record names (none when it
    names no data)."""
    try:
        train, roles = data.find_roles(source["data_dir"], source["validation_split"],
                                       source.get("evaluation_split", 0.0), source["seed"],
                                       source["image_size"])
    except (KeyError, CatdogError):
        return ()
    return train.paths + roles.selection.paths


# --- answers -----------------------------------------------------------------------------------

def predict_files(classifier: inference.Classifier, files: data.ImageFiles, batch_size: int,
                  max_pixels: int = images.MAX_IMAGE_PIXELS,
                  test_time_flip: bool = False) -> np.ndarray:
    """Probabilities [N, C] for every file, in order, with a progress line; with
    `test_time_flip`, the mean of the answers for each photo and its left-right mirror (a
    second forward pass per photo)."""
    probabilities = [np.zeros((0, len(classifier.class_names)), np.float32)]
    if not len(files):
        return probabilities[0]
    if test_time_flip:
        classifier = inference.with_test_time_flip(classifier)
    decoded = data.decoded_images(files, classifier.image_size, max_pixels)
    with ProgressLine(len(files), "image") as progress:
        for pixels, _ in data.batches(decoded, batch_size):
            probabilities.append(classifier.predict(pixels.numpy()))
            progress.add(len(pixels))
    return np.concatenate(probabilities)


def version_answers(version: Path, files: data.ImageFiles, batch_size: int,
                    max_pixels: int = images.MAX_IMAGE_PIXELS, what: str = "") -> np.ndarray:
    """A SavedModel version's probabilities for `files` through its `predict_pixels` signature
    (the graph TF Serving runs), computed the first time only: they are kept in the version's
    folder per photo set (`versions.remember_answers`), and move with it."""
    key, what = photo_set(files), what or str(version)
    kept = versions.remembered_answers(version, key)
    if kept is not None and len(kept) == len(files):
        logging.info("%s's answers for these %d photos: kept in %s since they were computed",
                     what, len(files), version / versions.ANSWERS_DIR)
        return kept
    logging.info("evaluating %s on %d photos", what, len(files))
    probabilities = predict_files(inference.load_classifier(version), files, batch_size,
                                  max_pixels)
    try:
        versions.remember_answers(version, key, probabilities)
    except CatdogError as error:  # a read-only version folder: answers computed, not kept
        logging.warning("%s; its answers will be computed again next time", error)
    return probabilities


def baseline_answers(base: Path, files: data.ImageFiles, batch_size: int,
                     max_pixels: int = images.MAX_IMAGE_PIXELS
                     ) -> tuple[Path | None, np.ndarray | None, list[dict[str, str]]]:
    """The newest version under a base path that answers (what TF Serving keeps serving when a
    newer one fails to load) with its answers for `files`, and the newer ones that do not, each
    with the reason."""
    damaged = []
    for version in versions.versions(base):
        try:
            return version, version_answers(version, files, batch_size, max_pixels,
                                            f"version {version.name}"), damaged
        except Exception as error:  # any loader failure makes the version unusable
            reason = first_line(error)[:200]
            logging.warning("published version %s cannot be loaded (%s); comparing with the "
                            "next older one", version, reason)
            damaged.append({"version": version.name, "reason": reason})
    return None, None, damaged


# --- figures -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelResult:
    """One model's answers on the photos, its figures, and what is known about the model."""

    label: str  # how the reports name it: "model" or "baseline"
    identity: dict[str, Any]  # path, version, source run and epoch, image size, classes, precision
    probabilities: np.ndarray  # [N, C]
    metrics: dict[str, Any]  # figures.compute_metrics
    intervals: dict[str, tuple[float, float]]  # figures.bootstrap_intervals


def model_result(label: str, path: str | os.PathLike, class_names: Sequence[str],
                 probabilities: np.ndarray, labels: np.ndarray,
                 bootstrap_samples: int = figures.BOOTSTRAP_SAMPLES,
                 precision: str = "") -> ModelResult:
    """One model's figures, their bootstrap intervals and its identity (`precision`: the one
    its answers were computed in, when not the one its export records)."""
    identity = {**inference.identity_of(path), "class_names": ", ".join(class_names)}
    if precision:
        identity["precision"] = precision
    return ModelResult(
        label, identity, probabilities,
        figures.compute_metrics(labels, probabilities, class_names),
        figures.bootstrap_intervals(labels, probabilities, bootstrap_samples))


def most_confidently_wrong(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Indices of the misclassified images, the most confidently wrong first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")]


def misclassified_files(files: data.ImageFiles, probabilities: np.ndarray,
                        class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Each misclassified file with its true and predicted class, most confidently wrong first."""
    predicted = probabilities.argmax(axis=1)
    return [{"path": files.paths[i], "label": class_names[files.labels[i]],
             "predicted": class_names[predicted[i]],
             "probability": float(probabilities[i, predicted[i]])}
            for i in most_confidently_wrong(np.array(files.labels), probabilities)]


COMPARED = ("accuracy", "roc_auc", "log_loss", "expected_calibration_error")


def comparison(model: ModelResult, baseline: ModelResult, labels: np.ndarray,
               bootstrap_samples: int = figures.BOOTSTRAP_SAMPLES) -> dict[str, Any]:
    """Both models on the same photos: figure deltas, a paired bootstrap interval on the
    accuracy difference, McNemar's test, and the photos (indices) on which their answers
    differ."""
    correct = [r.probabilities.argmax(axis=1) == labels for r in (model, baseline)]
    predicted = [r.probabilities.argmax(axis=1) for r in (model, baseline)]
    return {
        "figures": {name: {"model": model.metrics[name], "baseline": baseline.metrics[name]}
                    for name in COMPARED},
        "accuracy_difference": figures.paired_accuracy_difference(
            correct[0], correct[1], bootstrap_samples),
        "mcnemar": figures.mcnemar(correct[0], correct[1]),
        "disagreements": np.flatnonzero(predicted[0] != predicted[1]).tolist(),
    }


def heat_maps(model_path: str | os.PathLike, files: data.ImageFiles, probabilities: np.ndarray,
              count: int, max_pixels: int = images.MAX_IMAGE_PIXELS) -> np.ndarray:
    """Grad-CAM heat maps of the predicted class for the `count` most confidently wrong photos
    (the model rebuilt as Keras from either export: `inference.load_keras_model`)."""
    wrong = most_confidently_wrong(np.array(files.labels), probabilities)[:count]
    if not len(wrong):
        return np.zeros((0,))
    model, _ = inference.load_keras_model(model_path)
    size = model.input_shape[1]
    pixels = np.stack([tf.cast(images.load_image(tf.constant(files.paths[i]), size, max_pixels),
                               tf.float32).numpy() for i in wrong])
    return gradcam.heatmaps(model, pixels, probabilities.argmax(axis=1)[wrong])
