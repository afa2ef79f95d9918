"""`python -m catdog.batch`: whole Beam pipelines over a folder holding a broken file, each
compared with `catdog.predict` on the same photos."""

from __future__ import annotations

import glob
import json
import shutil

import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from catdog import bulk_inference, image_formats, images, inference, predict
from catdog.errors import CatdogError

from conftest import run_catdog

pytestmark = pytest.mark.slow  # each runs a Beam pipeline


@pytest.fixture(scope="module")
def photos(tmp_path_factory, jpegs, dataset_dir_module):
    """Twelve photos in nested folders, a broken JPEG, an empty PNG and a text file."""
    folder = tmp_path_factory.mktemp("photos")
    shutil.copytree(dataset_dir_module / "validation", folder / "nested")
    for path in jpegs:
        shutil.copy(path, folder)
    (folder / "broken.jpg").write_bytes(jpegs[0].read_bytes()[:300])
    (folder / "nested" / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def predicted(exported, photos) -> dict[str, dict]:
    """catdog.predict's records for every image in the folder, by path."""
    paths = list(image_formats.image_paths([str(photos)]))
    classifier = inference.load_classifier(exported[2] / "1")
    return {r["path"]: r for r in predict.predict_paths(classifier, paths, 4)}


def assert_same_records(records: list[dict], predicted: dict[str, dict]) -> None:
    assert sorted(r["path"] for r in records) == sorted(predicted)
    for record in records:
        expected = predicted[record["path"]]
        if "error" in expected:
            assert record == expected
            continue
        assert set(record) == set(expected)
        assert record["label"] == expected["label"]
        assert record["probability"] == pytest.approx(expected["probability"], abs=1e-5)
        assert record["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)


def test_the_command_labels_every_photo_as_predict_does(exported, photos, predicted, tmp_path):
    result = run_catdog("batch", f"--model={exported[2]}", f"--input={photos}",
                        f"--output={tmp_path / 'out' / 'labels'}", "--batch_size=3")
    assert result.returncode == 1, result.stderr  # two files failed, as predict's status says
    assert result.stderr.splitlines()[-1] == (
        f"labelled 15 photos, 2 failed, 1 files skipped (not images); "
        f"records in {tmp_path / 'out' / 'labels'}*")
    assert "Traceback" not in result.stderr
    (written,) = glob.glob(str(tmp_path / "out" / "labels-*-of-*.jsonl"))
    records = [json.loads(line) for line in open(written)]
    assert_same_records(records, predicted)
    errors = {r["path"]: r["error"] for r in records if "error" in r}
    assert errors[str(photos / "nested" / "empty.png")] == "Input is empty."
    assert len(errors) == 2 and sum("error" in r for r in predicted.values()) == 2


def test_two_worker_processes_write_the_same_records_as_parquet(exported, photos, predicted,
                                                               tmp_path):
    """Beam's multi-process local run pickles the handler and loads the model in each worker,
    as a cluster's workers do."""
    options = bulk_inference.pipeline_options(
        ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    counts = bulk_inference.run_labelling(
        options, [f"{photos}/**"], str(exported[2] / "1"), str(tmp_path / "labels"), "parquet",
        4, images.MAX_IMAGE_PIXELS, "catdog")
    assert counts == {"labelled": 15, "failed": 2, "skipped": 1}
    rows = [row for path in glob.glob(str(tmp_path / "labels-*.parquet"))
            for row in pq.read_table(path).to_pylist()]
    records = [{k: v for k, v in row.items() if v is not None} for row in rows]
    assert_same_records(records, predicted)


def test_prediction_logs_parse_and_errors_go_beside_them(exported, photos, predicted, tmp_path):
    counts = bulk_inference.run_labelling(
        bulk_inference.pipeline_options([]), [f"{photos}/*.jpg"], str(exported[2] / "1"),
        str(tmp_path / "logs"), "tfrecord", 8, images.MAX_IMAGE_PIXELS, "catdog")
    assert counts == {"labelled": 3, "failed": 1, "skipped": 0}
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
            tf.data.TFRecordDataset(glob.glob(str(tmp_path / "logs-*.tfrecord")))]
    by_image = {tf.make_ndarray(log.predict_log.request.inputs["image_bytes"])[0]: log
                for log in logs}
    for path in photos.glob("*.jpg"):
        if path.name == "broken.jpg":
            continue
        probabilities = tf.make_ndarray(
            by_image[path.read_bytes()].predict_log.response.outputs["probabilities"])[0]
        expected = predicted[str(path)]["probabilities"]
        assert probabilities.tolist() == pytest.approx(list(expected.values()), abs=1e-5)
    (errors,) = glob.glob(str(tmp_path / "logs-*.errors.jsonl"))
    assert [json.loads(line) for line in open(errors)] == [predicted[str(photos / "broken.jpg")]]


def test_a_pipeline_that_fails_says_so_in_one_line(exported, photos, tmp_path):
    (tmp_path / "file").write_text("a file where the output's folder should be")
    with pytest.raises(CatdogError, match=r"^the labelling pipeline failed: .*file"):
        bulk_inference.run_labelling(
            bulk_inference.pipeline_options([]), [f"{photos}/*.jpg"], str(exported[2] / "1"),
            str(tmp_path / "file" / "labels"), "jsonl", 8, images.MAX_IMAGE_PIXELS, "catdog")
