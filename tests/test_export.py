"""Export: .h5 and SavedModel written atomically, versioned, and reloadable with class names."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from catdog import export, inference
from catdog import model as model_lib
from catdog.errors import CatdogError
from catdog.wire import image_example

CLASS_NAMES = ("cats", "dogs")


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    return model_lib.build_classifier(len(CLASS_NAMES), image_size=32, weights="none")


@pytest.fixture
def pixels():
    """Whole-number pixels, which survive PNG encoding exactly."""
    return np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype("float32")


def test_h5_round_trip_keeps_predictions_and_class_names(classifier, pixels, tmp_path):
    path = export.export_h5(classifier, CLASS_NAMES, tmp_path / "m.h5")
    reloaded, class_names = inference.load_h5(path)
    assert class_names == list(CLASS_NAMES)
    np.testing.assert_allclose(reloaded(pixels), classifier(pixels), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["m.h5"]


@pytest.fixture(scope="module")
def saved_model(classifier, tmp_path_factory):
    base = tmp_path_factory.mktemp("export") / "catdog"
    return export.export_saved_model(classifier, CLASS_NAMES, base)


def encoded_images(pixels):
    return [tf.io.encode_png(tf.cast(p, tf.uint8)).numpy() for p in pixels]


def test_saved_model_has_the_three_serving_signatures(saved_model):
    assert saved_model.name == "1" and (saved_model / "saved_model.pb").is_file()
    meta_graph = saved_model_pb2.SavedModel.FromString(
        (saved_model / "saved_model.pb").read_bytes()).meta_graphs[0]
    methods = {k: v.method_name for k, v in meta_graph.signature_def.items()
               if not k.startswith("__")}
    assert methods == {"serving_default": "tensorflow/serving/predict",
                       "predict_pixels": "tensorflow/serving/predict",
                       "classify": "tensorflow/serving/classify"}
    sig = meta_graph.signature_def
    assert list(sig["serving_default"].inputs) == ["image_bytes"]
    assert list(sig["predict_pixels"].inputs) == ["pixels"]
    assert list(sig["classify"].inputs) == ["inputs"]
    for key in ("serving_default", "predict_pixels"):
        assert sorted(sig[key].outputs) == ["class_ids", "classes", "probabilities"]
    assert sorted(sig["classify"].outputs) == ["classes", "scores"]
    assert (saved_model / "assets" / "labels.txt").read_text() == "cats\ndogs\n"


def test_signatures_agree_with_the_model_on_pixels_bytes_and_examples(classifier, saved_model,
                                                                      pixels):
    signatures = tf.saved_model.load(str(saved_model)).signatures
    expected = classifier(pixels).numpy()
    by_pixels = signatures["predict_pixels"](pixels=tf.constant(pixels))
    np.testing.assert_allclose(by_pixels["probabilities"], expected, atol=1e-6)
    np.testing.assert_array_equal(by_pixels["class_ids"], expected.argmax(axis=1))
    assert [c.decode() for c in by_pixels["classes"].numpy()] == [
        CLASS_NAMES[i] for i in expected.argmax(axis=1)]
    # PNG is lossless and the images are already 32 px, so decoding gives the same pixels back.
    encoded = encoded_images(pixels)
    by_bytes = signatures["serving_default"](image_bytes=tf.constant(encoded))
    np.testing.assert_allclose(by_bytes["probabilities"], expected, atol=1e-4)
    examples = [image_example(e).SerializeToString() for e in encoded]
    classified = signatures["classify"](inputs=tf.constant(examples))
    np.testing.assert_allclose(classified["scores"], expected, atol=1e-4)
    assert classified["classes"].numpy().astype(str).tolist() == [list(CLASS_NAMES)] * 3


def test_undecodable_bytes_fail_with_invalid_argument(saved_model):
    serving_default = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        serving_default(image_bytes=tf.constant([b"not an image"]))


def test_warmup_requests_cover_every_signature_and_run(saved_model):
    path = saved_model / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(str(path))]
    predict = [log.predict_log.request for log in logs if log.HasField("predict_log")]
    classify = [log.classify_log.request for log in logs if log.HasField("classify_log")]
    assert sorted({r.model_spec.signature_name for r in predict}) == [
        "predict_pixels", "serving_default"]
    assert {r.model_spec.signature_name for r in classify} == {"classify"}
    assert {r.model_spec.name for r in predict + classify} == {"catdog"}
    signatures = tf.saved_model.load(str(saved_model)).signatures
    for request in predict:
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        outputs = signatures[request.model_spec.signature_name](**inputs)
        assert outputs["probabilities"].shape[0] == len(next(iter(inputs.values())))
    for request in classify:
        examples = [e.SerializeToString() for e in request.input.example_list.examples]
        assert signatures["classify"](inputs=tf.constant(examples))["scores"].shape == (
            len(examples), 2)


def test_versions_count_up_and_no_temporary_folder_remains(classifier, tmp_path):
    base = tmp_path / "catdog"
    (base / "7").mkdir(parents=True)
    (base / "notes").mkdir()
    assert export.export_saved_model(classifier, CLASS_NAMES, base).name == "8"
    assert export.export_saved_model(classifier, CLASS_NAMES, base).name == "9"
    assert sorted(p.name for p in base.iterdir()) == ["7", "8", "9", "notes"]
    assert export.export_saved_model(classifier, CLASS_NAMES, base, keep_versions=2).name == "10"
    assert sorted(p.name for p in base.iterdir()) == ["10", "9", "notes"]


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
    with pytest.raises(CatdogError, match="cannot write .*catdog.h5: disk full"):
        export.export_h5(classifier, CLASS_NAMES, exports.h5)
    with pytest.raises(CatdogError, match="cannot write .*catdog/2: disk full"):
        export.export_saved_model(classifier, CLASS_NAMES, tmp_path / "catdog")
    assert exports.h5.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catdog", "catdog.h5"]
    assert sorted(p.name for p in (tmp_path / "catdog").iterdir()) == ["1"]


PLAIN_KERAS = """
import sys, numpy as np, keras
model = keras.models.load_model(sys.argv[1], compile=False)
assert not [m for m in sys.modules if m.startswith("catdog")]
np.save(sys.argv[3], model(np.load(sys.argv[2]), training=False))
"""


@pytest.mark.slow
def test_h5_opens_with_plain_keras_in_a_process_without_catdog(classifier, tmp_path):
    from conftest import run_python

    exports = export.export_all(classifier, CLASS_NAMES, tmp_path, "catdog")
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "pixels.npy", pixels)
    run_python(PLAIN_KERAS, str(exports.h5), str(tmp_path / "pixels.npy"),
               str(tmp_path / "out.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"),
                               classifier(pixels, training=False).numpy(), atol=1e-5)


def test_exports_are_readable_by_other_users(classifier, tmp_path):
    """0644 files and 0755 folders under umask 022, so TF Serving running as another user reads
    them (mkstemp and mkdtemp alone would give 0600 and 0700)."""
    umask = os.umask(0o022)
    try:
        exports = export.export_all(classifier, CLASS_NAMES, tmp_path, "catdog")
    finally:
        os.umask(umask)
    assert exports.h5.stat().st_mode & 0o777 == 0o644
    for path in [exports.saved_model, *exports.saved_model.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


def test_the_saved_model_stores_each_weight_once(classifier, tmp_path):
    """The SavedModel's variables are no bigger than the model's weights (116 MB for a 58 MB
    VGG16 when the export archive tracked the model besides its endpoints)."""
    exports = export.export_all(classifier, CLASS_NAMES, tmp_path, "catdog")
    weights = sum(int(np.prod(v.shape)) * 4 for v in classifier.weights)
    stored = sum(p.stat().st_size for p in (exports.saved_model / "variables").iterdir())
    assert weights <= stored < 1.05 * weights
