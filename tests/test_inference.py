"""catdog.inference: either export reads back with its class names and the same answers."""

import numpy as np
import pytest

from catdog import export, inference
from catdog.errors import CatdogError

from conftest import CLASSES


def test_h5_round_trip_keeps_predictions_and_class_names(classifier, pixels, tmp_path):
    path = export.export_h5(classifier, CLASSES, tmp_path / "m.h5")
    reloaded, class_names = inference.load_h5(path)
    assert class_names == list(CLASSES)
    np.testing.assert_allclose(reloaded(pixels), classifier(pixels), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["m.h5"]


def test_both_exports_classify_alike_with_their_class_names(exported, pixels):
    model, h5, base = exported
    expected = model(pixels, training=False).numpy()
    for path in (h5, base / "1"):
        loaded = inference.load_classifier(path)
        assert (loaded.class_names, loaded.image_size) == (list(CLASSES), 32), path
        np.testing.assert_allclose(loaded.predict(pixels), expected, atol=1e-5)


def test_a_path_that_is_no_export_is_one_line_naming_what_would_do(tmp_path):
    with pytest.raises(CatdogError, match=r"^--model=.* is neither a \.h5 file nor a SavedModel "
                                          r"version folder \(one holding saved_model\.pb"):
        inference.load_classifier(tmp_path)


def test_a_h5_model_can_compute_in_bfloat16_with_nearly_the_same_answers(classifier, pixels,
                                                                         tmp_path):
    path = export.export_h5(classifier, CLASSES, tmp_path / "m.h5")
    in_float32 = inference.load_classifier(path)
    in_bfloat16 = inference.load_classifier(path, "mixed_bfloat16")
    assert (in_float32.precision, in_bfloat16.precision) == ("float32", "mixed_bfloat16")
    reference = in_float32.predict(pixels)
    approximate = in_bfloat16.predict(pixels)
    assert approximate.dtype == np.float32
    assert not np.array_equal(approximate, reference)  # it really computed in bfloat16
    np.testing.assert_allclose(approximate, reference, atol=0.02)


@pytest.mark.slow  # three loads; predict --explain uses it in the default tier
def test_a_saved_model_version_rebuilds_as_the_keras_model_it_was(exported, pixels):
    """Grad-CAM needs layers: the SavedModel's own variables go back into catdog's
    architecture, and the rebuilt model answers as predict_pixels does."""
    _, h5, base = exported
    rebuilt, class_names = inference.load_keras_model(base / "1")
    assert class_names == list(CLASSES)
    served = inference.load_classifier(base / "1").predict(pixels)
    np.testing.assert_allclose(rebuilt(pixels, training=False).numpy(), served, atol=1e-6)
    h5_model, _ = inference.load_keras_model(h5)
    np.testing.assert_allclose(h5_model(pixels, training=False).numpy(), served, atol=1e-5)


def test_an_h5_holding_python_code_is_refused_in_one_line(tmp_path):
    """Keras' safe mode will not load a Lambda layer's Python function from a file (no code
    runs); catdog says so in one line instead of Keras' traceback."""
    import json

    import h5py
    import keras

    inputs = keras.Input((32, 32, 3), name="pixels")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(lambda x: x * 2)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    path = tmp_path / "lambda.h5"
    model.save(path)
    with h5py.File(path, "a") as f:
        f.attrs["catdog_class_names"] = json.dumps(["cats", "dogs"])
    with pytest.raises(CatdogError, match=r"^.*lambda\.h5 holds a Keras Lambda layer's Python "
                                          r"code, which Keras will not load from a file"):
        inference.load_h5(path)

