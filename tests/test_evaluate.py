"""Evaluate: the metrics, the three report files, and equal numbers from .h5 and SavedModel."""

import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from catdog import evaluate, export
from catdog import model as model_lib

from conftest import run_catdog


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = model_lib.build_classifier(2, 32, "none")
    exports = export.export_all(model, ("cats", "dogs"), tmp_path_factory.mktemp("e"), "catdog")
    return exports


def test_metrics_on_a_case_worked_by_hand():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])
    metrics = evaluate.compute_metrics(labels, probabilities, ("cats", "dogs"))
    assert metrics["accuracy"] == 0.5
    assert metrics["confusion_matrix"] == [[1, 1], [1, 1]]
    assert metrics["per_class"]["cats"]["precision"] == 0.5
    assert metrics["per_class"]["dogs"]["recall"] == 0.5
    assert metrics["per_class"]["dogs"]["f1"] == 0.5
    # Of the 4 (dog, cat) pairs, 3 rank the dog's "dogs" score higher.
    assert metrics["per_class"]["dogs"]["roc_auc"] == pytest.approx(0.75, abs=1e-3)
    assert metrics["log_loss"] == pytest.approx(-np.log([0.9, 0.4, 0.8, 0.3]).mean(), rel=1e-5)
    # One image per confidence bin: (|1-.9| + |0-.6| + |1-.8| + |0-.7|) / 4.
    assert metrics["expected_calibration_error"] == pytest.approx(0.4)


def test_h5_and_saved_model_give_the_same_report(exported, dataset_dir, tmp_path):
    folder = dataset_dir / "validation"
    (folder / "dogs" / "broken.jpg").write_bytes(b"")
    by_h5 = evaluate.evaluate(str(exported.h5), str(folder), str(tmp_path / "h5"))
    by_saved_model = evaluate.evaluate(str(exported.saved_model), str(folder),
                                       str(tmp_path / "sm"))
    assert by_h5["confusion_matrix"] == by_saved_model["confusion_matrix"]
    assert by_h5["accuracy"] == by_saved_model["accuracy"]
    assert by_h5["log_loss"] == pytest.approx(by_saved_model["log_loss"], abs=1e-6)
    assert by_h5["images"] == 12 and np.sum(by_h5["confusion_matrix"]) == 12
    assert [s["path"].endswith("broken.jpg") for s in by_h5["skipped"]] == [True]

    out = tmp_path / "h5"
    assert sorted(p.name for p in out.iterdir()) == ["misclassified.png", "report.json",
                                                     "report.md"]
    assert json.loads((out / "report.json").read_text())["accuracy"] == by_h5["accuracy"]
    markdown = (out / "report.md").read_text()
    assert "| accuracy |" in markdown and "| cats |" in markdown and "broken.jpg" in markdown
    wrong = 12 - round(by_h5["accuracy"] * 12)
    assert len(by_h5["misclassified"]) == wrong
    for item in by_h5["misclassified"]:  # named in the report, each truly misclassified
        assert item["label"] != item["predicted"] and f"- {item['path']}:" in markdown
        assert Path(item["path"]).parent.name == item["label"]
    grid = Image.open(out / "misclassified.png")
    if wrong:
        assert grid.size == (8 * 128, math.ceil(wrong / 8) * (128 + 30))


def test_class_folders_must_match_the_models_classes(exported, dataset_dir, tmp_path):
    (dataset_dir / "validation" / "dogs").rename(dataset_dir / "validation" / "birds")
    result = run_catdog("evaluate", f"--model={exported.h5}",
                        f"--data_dir={dataset_dir / 'validation'}",
                        f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert "has classes ['birds', 'cats'] but the model knows ['cats', 'dogs']" in result.stderr
    assert not (tmp_path / "out").exists()
