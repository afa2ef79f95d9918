"""catdog.signatures: the SavedModel's three serving signatures, their agreement with the model
on pixels, image bytes and tf.Examples, and warm-up requests that cover and run every one."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from catdog.images import image_example

from conftest import CLASSES


@pytest.fixture(scope="module")
def saved_model(exported):
    """The session's export (conftest.py): version 1 of `exported[0]`."""
    return exported[2] / "1"


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


def test_signatures_agree_with_the_model_on_pixels_bytes_and_examples(exported, saved_model,
                                                                      pixels):
    signatures = tf.saved_model.load(str(saved_model)).signatures
    expected = exported[0](pixels).numpy()
    by_pixels = signatures["predict_pixels"](pixels=tf.constant(pixels))
    np.testing.assert_allclose(by_pixels["probabilities"], expected, atol=1e-6)
    np.testing.assert_array_equal(by_pixels["class_ids"], expected.argmax(axis=1))
    assert [c.decode() for c in by_pixels["classes"].numpy()] == [
        CLASSES[i] for i in expected.argmax(axis=1)]
    # PNG is lossless and the images are already 32 px, so decoding gives the same pixels back.
    encoded = encoded_images(pixels)
    by_bytes = signatures["serving_default"](image_bytes=tf.constant(encoded))
    np.testing.assert_allclose(by_bytes["probabilities"], expected, atol=1e-4)
    examples = [image_example(e).SerializeToString() for e in encoded]
    classified = signatures["classify"](inputs=tf.constant(examples))
    np.testing.assert_allclose(classified["scores"], expected, atol=1e-4)
    assert classified["classes"].numpy().astype(str).tolist() == [list(CLASSES)] * 3


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
