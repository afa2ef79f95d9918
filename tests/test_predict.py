"""Predict: one line per image from .h5 or SavedModel alike; bad files get an error line."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catdog import export, image_formats, inference, predict

from conftest import png_bomb, run_catdog


@pytest.fixture(scope="module")
def exports(exported) -> export.Exports:
    """The session's small export (conftest.py), as its .h5 and its SavedModel version."""
    return export.Exports(h5=exported[1], saved_model=exported[2] / "1")


def test_h5_and_saved_model_label_a_folder_equally(exports, dataset_dir):
    paths = list(image_formats.image_paths([str(dataset_dir / "validation")]))
    assert len(paths) == 12
    by_h5 = list(predict.predict_paths(inference.load_classifier(exports.h5), paths, 5))
    by_sm = list(predict.predict_paths(inference.load_classifier(exports.saved_model), paths, 5))
    assert [r["path"] for r in by_h5] == paths
    assert [r["label"] for r in by_h5] == [r["label"] for r in by_sm]
    for a, b in zip(by_h5, by_sm):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
        assert set(a["probabilities"]) == {"cats", "dogs"}


@pytest.mark.slow  # spawns the CLI
def test_cli_labels_a_folder_and_reports_bad_files_without_a_traceback(exports, dataset_dir):
    folder = dataset_dir / "validation"
    (folder / "cats" / "empty.jpg").write_bytes(b"")
    (folder / "cats" / "notes.txt").write_text("not an image")
    result = run_catdog("predict", f"--model={exports.saved_model}", str(folder),
                        str(folder / "missing.png"))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 12
    for line in lines:
        path, label, probability = line.split("\t")
        assert label in ("cats", "dogs") and 0.5 <= float(probability) <= 1
    assert "empty.jpg\terror: Input is empty." in result.stderr
    assert "missing.png\terror: no such file" in result.stderr
    assert "skipped 1 file(s) in the folders given that are not images" in result.stderr
    assert "notes.txt" in result.stderr
    assert "Traceback" not in result.stderr

    jsonl = run_catdog("predict", f"--model={exports.h5}", "--format=jsonl", str(folder))
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert jsonl.returncode == 1 and len(records) == 13
    assert [r["error"] for r in records if "error" in r] == ["Input is empty."]


def test_predict_labels_a_webp_photo_as_the_same_photo_in_png(exports, dataset_dir, tmp_path):
    photo = Image.open(next((dataset_dir / "validation" / "cats").iterdir()))
    photo.save(tmp_path / "cat.webp", lossless=True)
    photo.save(tmp_path / "cat.png")
    classifier = inference.load_classifier(exports.saved_model)
    webp, png = predict.predict_paths(classifier, [str(tmp_path / "cat.webp"),
                                                   str(tmp_path / "cat.png")], 4)
    assert "error" not in webp
    assert webp["probabilities"] == pytest.approx(png["probabilities"], abs=1e-6)


def test_predict_refuses_a_bomb_and_never_reads_a_fifo(exports, tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_bomb())
    os.mkfifo(tmp_path / "pipe.jpg")
    classifier = inference.load_classifier(exports.saved_model)
    results = list(predict.predict_paths(classifier, [str(tmp_path / "bomb.png"),
                                                      str(tmp_path / "pipe.jpg")], 4))
    assert "--max_image_pixels" in results[0]["error"]
    assert "not a regular file" in results[1]["error"]


def test_explain_writes_a_heat_map_overlay_for_each_image(exports, dataset_dir, tmp_path):
    paths = list(image_formats.image_paths([str(dataset_dir / "validation" / "cats")]))[:2]
    paths.append(str(dataset_dir / "validation" / "dogs" / Path(paths[0]).name))  # same name
    Path(paths[2]).write_bytes(Path(paths[0]).read_bytes())
    written = predict.write_explanations(str(exports.saved_model), paths, tmp_path / "x")
    assert [p.name for p in written] == [f"{Path(paths[0]).stem}.gradcam.png",
                                         f"{Path(paths[1]).stem}.gradcam.png",
                                         f"{Path(paths[0]).stem}-2.gradcam.png"]
    overlay = np.asarray(Image.open(written[0]))
    assert overlay.shape == (round(40 * 512 / 48), 512, 3)  # the 40×48 photo, longest side 512
