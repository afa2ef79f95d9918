"""catdog.evaluation, the evaluator: which photos judge a model and in which role, a digest that
names a photo set as it is now, and the answers in the photos' order."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from catdog import data, evaluation, inference, versions
from catdog.config import Config
from catdog.errors import CatdogError

from conftest import CLASSES, write_split


def test_a_photo_set_digest_changes_with_a_photo_a_label_or_a_file(dataset_dir):
    files = data.list_images(dataset_dir / "validation", CLASSES)
    digest = evaluation.photo_set(files)
    assert evaluation.photo_set(files) == digest
    assert evaluation.photo_set(files.subset(range(1, len(files)))) != digest
    relabelled = data.ImageFiles(files.paths, tuple(1 - x for x in files.labels), CLASSES)
    assert evaluation.photo_set(relabelled) != digest
    os.utime(files.paths[0], ns=(0, os.stat(files.paths[0]).st_mtime_ns + 10**9))
    assert evaluation.photo_set(files) != digest


def test_the_gate_photos_of_a_run_are_its_evaluation_photos(dataset_dir):
    splits = data.prepare_splits(Config(data_dir=str(dataset_dir), image_size=32))
    photos = evaluation.run_photos(splits, str(dataset_dir))
    assert photos.role == evaluation.EVALUATION and photos.files == splits.evaluation
    assert photos.describe().startswith("6 photos from ")
    assert photos.describe().endswith("(evaluation photos, which chose nothing)")
    # Found again from what an export records of the run: the same photos.
    again = evaluation.recorded_photos({
        "data_dir": str(dataset_dir), "validation_split": 0.0, "evaluation_split": 0.5,
        "seed": 42, "image_size": 32})
    assert again.files.paths == photos.files.paths and again.role == evaluation.EVALUATION


def test_photos_that_also_chose_the_model_are_named_selection_photos(dataset_dir, tmp_path):
    splits = data.prepare_splits(Config(data_dir=str(dataset_dir), image_size=32,
                                        evaluation_split=0))
    photos = evaluation.run_photos(splits, str(dataset_dir))
    assert photos.role == evaluation.SELECTION and "SELECTION photos" in photos.describe()
    # --gate_data_dir pointing at the validation folder of the same run
    chosen = evaluation.chosen_by(splits)
    folder = evaluation.folder_photos(str(dataset_dir / "validation"), CLASSES, 32, 0.5,
                                      chosen)
    assert folder.role == evaluation.SELECTION
    elsewhere = tmp_path / "elsewhere"
    write_split(elsewhere, 2, seed=5)
    assert evaluation.folder_photos(str(elsewhere), CLASSES, 32, 0.5,
                                    chosen).role == evaluation.EVALUATION


def test_a_dataset_folder_is_judged_on_its_evaluation_photos(dataset_dir):
    splits = data.prepare_splits(Config(data_dir=str(dataset_dir), image_size=32))
    photos = evaluation.folder_photos(str(dataset_dir), CLASSES, 32, 0.5,
                                      evaluation.chosen_by(splits))
    assert photos.files.paths == splits.evaluation.paths
    assert photos.role == evaluation.EVALUATION


def test_answers_come_in_the_photos_order_and_an_empty_set_is_empty(exported, dataset_dir):
    classifier = inference.load_classifier(exported[2] / "1")
    files = data.list_images(dataset_dir / "validation", CLASSES)
    answers = evaluation.predict_files(classifier, files, batch_size=5)
    assert answers.shape == (len(files), 2)
    one = evaluation.predict_files(classifier, files.subset([3]), batch_size=5)
    np.testing.assert_allclose(one[0], answers[3], atol=1e-6)
    assert evaluation.predict_files(classifier, files.subset([]), 5).shape == (0, 2)


def test_model_result_names_the_precision_the_export_records(exported, dataset_dir):
    files = data.list_images(dataset_dir / "validation", CLASSES)
    answers = np.tile([0.3, 0.7], (len(files), 1))
    result = evaluation.model_result("model", exported[2] / "1", CLASSES, answers,
                                     np.array(files.labels))
    assert result.identity["precision"] == "float32"
    assert result.metrics["accuracy"] == pytest.approx(0.5)
    low, high = result.intervals["accuracy"]
    assert low <= 0.5 <= high


def test_a_versions_answers_are_computed_once_per_photo_set(exported, dataset_dir, tmp_path,
                                                            monkeypatch):
    version = tmp_path / "1"
    shutil.copytree(exported[2] / "1", version)
    files = data.list_images(dataset_dir / "validation", CLASSES)
    first = evaluation.version_answers(version, files, batch_size=5)

    def no_loading(path, *args):
        raise AssertionError(f"{path} was loaded again")

    monkeypatch.setattr(inference, "load_classifier", no_loading)
    np.testing.assert_array_equal(evaluation.version_answers(version, files, 5), first)
    os.utime(files.paths[0], ns=(0, os.stat(files.paths[0]).st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="was loaded again"):  # a changed photo set
        evaluation.version_answers(version, files, 5)


def test_a_version_that_cannot_keep_its_answers_still_answers_and_says_so(
        exported, dataset_dir, monkeypatch, caplog):
    def read_only(version, photo_set, probabilities):
        raise CatdogError(f"cannot write {version}/answers: Read-only file system")

    monkeypatch.setattr(versions, "remember_answers", read_only)
    files = data.list_images(dataset_dir / "validation", CLASSES)
    with caplog.at_level("WARNING", logger="absl"):
        answers = evaluation.version_answers(exported[2] / "1", files, batch_size=6)
    assert answers.shape == (len(files), 2)  # not taken for a version that cannot be loaded
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.endswith("Read-only file system; its answers will be computed again next "
                            "time")
