"""Export: .h5 and SavedModel written atomically, versioned, and reloadable with class names."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from catdog import export
from catdog import model as model_lib

CLASS_NAMES = ("cats", "dogs")


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    return model_lib.build_classifier(len(CLASS_NAMES), image_size=32, weights="none")


@pytest.fixture
def pixels():
    return np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")


def test_h5_round_trip_keeps_predictions_and_class_names(classifier, pixels, tmp_path):
    path = export.export_h5(classifier, CLASS_NAMES, tmp_path / "m.h5")
    reloaded, class_names = export.load_h5(path)
    assert class_names == list(CLASS_NAMES)
    np.testing.assert_allclose(reloaded(pixels), classifier(pixels), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["m.h5"]


def test_saved_model_serving_default_takes_pixels_and_returns_labels(classifier, pixels,
                                                                     tmp_path):
    path = export.export_saved_model(classifier, CLASS_NAMES, tmp_path / "catdog")
    assert path == tmp_path / "catdog" / "1" and (path / "saved_model.pb").is_file()
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["pixels"]
    outputs = signature(pixels=tf.constant(pixels))
    expected = classifier(pixels).numpy()
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-6)
    np.testing.assert_array_equal(outputs["class_ids"], expected.argmax(axis=1))
    assert [c.decode() for c in outputs["classes"].numpy()] == [
        CLASS_NAMES[i] for i in expected.argmax(axis=1)]


def test_versions_count_up_and_no_temporary_folder_remains(classifier, tmp_path):
    base = tmp_path / "catdog"
    (base / "7").mkdir(parents=True)
    (base / "notes").mkdir()
    assert export.export_saved_model(classifier, CLASS_NAMES, base).name == "8"
    assert export.export_saved_model(classifier, CLASS_NAMES, base).name == "9"
    assert sorted(p.name for p in base.iterdir()) == ["7", "8", "9", "notes"]


def test_failed_export_leaves_earlier_exports_untouched(classifier, tmp_path, monkeypatch):
    exports = export.export_all(classifier, CLASS_NAMES, tmp_path, "catdog")
    before = exports.h5.read_bytes()

    def save_half_then_fail(path, **kwargs):
        path.write_bytes(b"half")
        raise OSError("disk full")

    def write_half_then_fail(self, path, **kwargs):
        (tmp_path / "catdog").joinpath(path, "saved_model.pb").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(classifier, "save", save_half_then_fail)
    archive_class = type(keras.export.ExportArchive())  # its __new__ picks a backend class
    monkeypatch.setattr(archive_class, "write_out", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        export.export_h5(classifier, CLASS_NAMES, exports.h5)
    with pytest.raises(OSError, match="disk full"):
        export.export_saved_model(classifier, CLASS_NAMES, tmp_path / "catdog")
    assert exports.h5.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catdog", "catdog.h5"]
    assert sorted(p.name for p in (tmp_path / "catdog").iterdir()) == ["1"]
