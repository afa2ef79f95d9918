"""Evaluate: the four report files, equal numbers from .h5 and SavedModel, a comparison with a
baseline from another run, and what report.html holds (tests/test_report.py opens it in a
browser)."""

import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from catdog import evaluate, evaluation, export
from catdog import model as model_lib
from catdog.errors import CatdogError


@pytest.fixture(scope="module")
def exports(exported) -> export.Exports:
    """The session's small export (conftest.py), as its .h5 and its SavedModel version."""
    return export.Exports(h5=exported[1], saved_model=exported[2] / "1")


def test_h5_and_saved_model_give_the_same_report(exports, dataset_dir, tmp_path):
    folder = dataset_dir / "validation"
    (folder / "dogs" / "broken.jpg").write_bytes(b"")
    by_h5 = evaluate.evaluate(str(exports.h5), str(folder), str(tmp_path / "h5"),
                              max_explained=0)  # heat maps: the next test but one
    by_saved_model = evaluate.evaluate(str(exports.saved_model), str(folder),
                                       str(tmp_path / "sm"), max_explained=0)
    assert by_h5["confusion_matrix"] == by_saved_model["confusion_matrix"]
    assert by_h5["accuracy"] == by_saved_model["accuracy"]
    assert by_h5["log_loss"] == pytest.approx(by_saved_model["log_loss"], abs=1e-6)
    assert by_h5["images"] == 12 and np.sum(by_h5["confusion_matrix"]) == 12
    assert [s["path"].endswith("broken.jpg") for s in by_h5["skipped"]] == [True]

    out = tmp_path / "h5"
    assert sorted(p.name for p in out.iterdir()) == ["misclassified.png", "report.html",
                                                     "report.json", "report.md"]
    low, high = by_h5["intervals"]["accuracy"]
    assert low <= by_h5["accuracy"] <= high
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


def test_an_output_dir_that_is_a_file_is_refused_before_any_photo_is_evaluated(
        exports, dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "predict_files", None)  # would fail if it were reached
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(CatdogError, match=r"^--output_dir=.*taken is a file; name a folder"):
        evaluate.evaluate(str(exports.h5), str(dataset_dir / "validation"),
                          str(tmp_path / "taken"))


def test_class_folders_must_match_the_models_classes(exports, dataset_dir, tmp_path):
    (dataset_dir / "validation" / "dogs").rename(dataset_dir / "validation" / "birds")
    with pytest.raises(CatdogError, match=r"has classes \['birds', 'cats'\] but the model knows "
                                          r"\['cats', 'dogs'\]"):
        evaluate.evaluate(str(exports.h5), str(dataset_dir / "validation"),
                          str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    """A second, differently seeded model's SavedModel version (another run)."""
    keras.utils.set_random_seed(8)
    model = model_lib.build_classifier(2, 32, "none")
    return export.export_all(model, ("cats", "dogs"), tmp_path_factory.mktemp("o"), "catdog")


@pytest.mark.slow  # three evaluations
def test_a_baseline_from_another_run_is_compared_on_the_same_photos(exports, other_run,
                                                                   dataset_dir, tmp_path):
    folder = dataset_dir / "validation"
    content = evaluate.evaluate(str(exports.h5), str(folder), str(tmp_path / "out"),
                                baseline=str(other_run.saved_model), max_explained=2)
    alone = evaluate.evaluate(str(other_run.saved_model), str(folder), str(tmp_path / "b"))
    assert content["baseline"]["accuracy"] == alone["accuracy"]
    compared = content["comparison"]
    assert compared["accuracy_difference"]["difference"] == pytest.approx(
        content["accuracy"] - alone["accuracy"])
    assert compared["figures"]["accuracy"] == {"model": content["accuracy"],
                                               "baseline": alone["accuracy"]}
    mcnemar = compared["mcnemar"]
    model_right = 12 - len(content["misclassified"])
    baseline_right = 12 - len(alone["misclassified"])
    assert mcnemar["a_only"] - mcnemar["b_only"] == model_right - baseline_right
    page = (tmp_path / "out" / "report.html").read_text()
    assert 'id="comparison"' in page and "McNemar" in page
    # Both models named by their place in their export folders; report.json names them whole.
    assert "<td>catdog/1</td>" in page and "<td>catdog.h5</td>" in page
    written = (tmp_path / "out" / "report.json").read_text()
    assert str(other_run.saved_model) in written and str(exports.h5) in written


def test_the_page_holds_every_section_and_the_heat_maps_it_says(exports, dataset_dir,
                                                                tmp_path):
    content = evaluate.evaluate(str(exports.saved_model), str(dataset_dir / "validation"),
                                str(tmp_path), max_explained=1)
    page = (tmp_path / "report.html").read_text()
    from catdog import report

    for section in report.SECTIONS:
        assert f'<section id="{section}">' in page, section
    assert 'id="comparison"' not in page
    wrong = min(len(content["misclassified"]), evaluation.MAX_SHOWN)
    assert page.count('alt="photo"') == wrong
    assert page.count('alt="Grad-CAM heat map"') == min(wrong, 1)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    # Mailed to a colleague, the page names no local folder; report.json keeps them whole.
    assert str(dataset_dir) not in page and str(exports.saved_model.parent) not in page
    assert str(dataset_dir) in (tmp_path / "report.json").read_text()


def test_test_time_flip_averages_each_photo_with_its_mirror(exports, dataset_dir, tmp_path):
    from catdog import data, inference

    classifier = inference.load_classifier(str(exports.h5), "float32")
    files, _ = evaluation.checked_files(str(dataset_dir / "validation"), classifier.class_names)
    plain = evaluation.predict_files(classifier, files, 4)
    pixels = np.concatenate([p.numpy() for p, _ in data.batches(
        data.decoded_images(files, 32), 4)])
    by_hand = (classifier.predict(pixels) + classifier.predict(pixels[:, :, ::-1])) / 2
    averaged = evaluate.evaluate(str(exports.h5), str(dataset_dir / "validation"),
                                 str(tmp_path / "flip"), batch_size=4, test_time_flip=True,
                                 max_explained=0)
    assert not np.allclose(by_hand, plain, atol=1e-6)
    assert averaged["test_time_flip"] is True and averaged["answer_seconds"] > 0
    assert averaged["log_loss"] == pytest.approx(  # evaluate's answers are by_hand's
        -np.mean(np.log(by_hand[np.arange(len(files)), files.labels])), rel=1e-5)


@pytest.mark.slow  # a training run through the gate, then four evaluations
def test_one_model_one_accuracy_when_training_ran_in_bfloat16(dataset_dir, tmp_path):
    """Trained in mixed_bfloat16 (as auto picks on a CPU with native bfloat16), exported in
    float32: the gate, evaluate on the .h5 and on the SavedModel, and predict all compute as
    the export records and give the same accuracy on the same evaluation photos."""
    from catdog import inference, predict, train

    from conftest import fast_config

    result = train.train(fast_config(dataset_dir, tmp_path, mixed_precision="mixed_bfloat16",
                                     publish="always"))
    gated = result.decision.record["candidate_figures"]["accuracy"]
    version = result.decision.version
    figures = {}
    for name, path in (("h5", result.exports.h5), ("saved_model", version)):
        precision = inference.resolve_precision("export", path)
        assert precision == "float32"
        content = evaluate.evaluate(str(path), str(dataset_dir), str(tmp_path / name),
                                    precision=precision, max_explained=0, bootstrap_samples=50)
        figures[name] = content["accuracy"]
    classifier = inference.load_classifier(result.exports.h5,
                                           inference.resolve_precision("export",
                                                                       result.exports.h5))
    photos = evaluation.folder_photos(str(dataset_dir), list(result.class_names), 32, 0.5)
    answers = [r for r in predict.predict_paths(classifier, list(photos.files.paths), 8)]
    names = list(result.class_names)
    right = [names.index(a["label"]) == label for a, label in zip(answers, photos.files.labels)]
    figures["predict"] = float(np.mean(right))
    assert figures == pytest.approx({"h5": gated, "saved_model": gated, "predict": gated},
                                    abs=5e-5), figures
