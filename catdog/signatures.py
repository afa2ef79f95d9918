"""The SavedModel's serving contract: signatures, the labels asset, and warm-up requests.

    serving_default  image_bytes  string [N] or one string []    → probabilities, class_ids,
                                  (JPEG/PNG/GIF/BMP)                classes
    predict_pixels   pixels       float32 [N, S, S, 3], RGB 0–255 → the same three
    classify         inputs       serialized tf.Example [N] with the image under image/encoded
                                  → classes string [N, C], scores float32 [N, C]
                                  (method tensorflow/serving/classify, for TF Serving's Classify)

Decoding and resizing use the training pipeline's own functions, and every endpoint calls the
model with training=False. The class names come from `assets/labels.txt` through a lookup table,
so they travel inside the SavedModel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    input_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
)

from catdog import images
from catdog.contract import (
    CLASS_IDS,
    CLASSES,
    CLASSIFY,
    CLASSIFY_INPUTS,
    CLASSIFY_METHOD,
    IMAGE_BYTES,
    IMAGE_FEATURE,
    LABELS_FILE,
    PIXELS,
    PREDICT_PIXELS,
    PROBABILITIES,
    SCORES,
    SERVING_DEFAULT,
    WARMUP_FILE,
)
from catdog.images import image_example


def serving_archive(model: keras.Model, labels_path: Path,
                    max_image_pixels: int = images.MAX_IMAGE_PIXELS,
                    test_time_flip: bool = False) -> keras.export.ExportArchive:
    """An ExportArchive with the three signatures above; `labels_path` holds one name a line.
    An encoded image declaring more than `max_image_pixels` is refused (INVALID_ARGUMENT)
    before it is decoded. With `test_time_flip`, every signature answers with the mean of the
    model's answers for the pixels and for their left-right mirror."""
    image_size = model.input_shape[1]
    num_classes = model.output_shape[-1]
    labels = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            str(labels_path), tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
            tf.string, tf.lookup.TextFileIndex.WHOLE_LINE),
        default_value="")

    def pixels_of(encoded_images):
        return tf.map_fn(
            lambda encoded: tf.cast(images.resize_image(
                images.decode_image(encoded, max_image_pixels), image_size),
                                    tf.float32),
            encoded_images, fn_output_signature=tf.TensorSpec([image_size, image_size, 3]))

    def probabilities_of(pixels):
        return tf.cast(model(pixels, training=False), tf.float32)

    def predictions(pixels):
        probabilities = probabilities_of(pixels)
        if test_time_flip:
            probabilities = (probabilities + probabilities_of(tf.reverse(pixels, [2]))) / 2
        class_ids = tf.argmax(probabilities, axis=-1)
        return {PROBABILITIES: probabilities, CLASS_IDS: class_ids,
                CLASSES: labels.lookup(class_ids)}

    # Any rank: TF Serving's own example clients send one image as a scalar string.
    @tf.function(input_signature=[tf.TensorSpec(None, tf.string, name=IMAGE_BYTES)])
    def serve_image_bytes(image_bytes):
        return predictions(pixels_of(tf.reshape(image_bytes, [-1])))

    @tf.function(input_signature=[
        tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=PIXELS)])
    def serve_pixels(pixels):
        return predictions(pixels)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUTS)])
    def classify(inputs):
        features = tf.io.parse_example(
            inputs, {IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)})
        scores = predictions(pixels_of(features[IMAGE_FEATURE]))[PROBABILITIES]
        names = labels.lookup(tf.range(num_classes, dtype=tf.int64))
        return {CLASSES: tf.tile(names[None], [tf.shape(scores)[0], 1]), SCORES: scores}

    archive = keras.export.ExportArchive()
    # The endpoints capture the model's variables themselves; tracking the model as well would
    # store every VGG16 weight twice (once per Keras variable wrapper).
    archive.track(labels)
    archive.add_endpoint(SERVING_DEFAULT, serve_image_bytes)
    archive.add_endpoint(PREDICT_PIXELS, serve_pixels)
    archive.add_endpoint(CLASSIFY, classify)
    return archive


def mark_classify_method(saved_model_dir: Path) -> None:
    """Gives the classify signature TF Serving's classify method name (Keras writes predict)."""
    path = saved_model_dir / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        meta_graph.signature_def[CLASSIFY].method_name = CLASSIFY_METHOD
    path.write_bytes(saved_model.SerializeToString())


def warmup_images(image_size: int) -> list[bytes]:
    """A JPEG and a PNG of smooth colour gradients: representative sizes and formats."""
    ramp = np.linspace(0, 255, image_size * 2, dtype=np.float32)
    image = np.stack([*np.meshgrid(ramp, ramp[::-1]), np.full((len(ramp),) * 2, 128.0)], -1)
    image = tf.constant(image.astype(np.uint8))
    return [tf.io.encode_jpeg(image).numpy(), tf.io.encode_png(image).numpy()]


def warmup_logs(model_name: str, image_size: int) -> list[prediction_log_pb2.PredictionLog]:
    """Two requests per signature (batches of one and two images), as TF Serving logs them."""
    encoded = warmup_images(image_size)
    pixels = [tf.cast(images.resize_image(images.decode_image(i), image_size), tf.float32).numpy()
              for i in encoded]
    logs = []
    for batch in ([0], [0, 1]):
        for signature, key, value in (
                (SERVING_DEFAULT, IMAGE_BYTES, np.array([encoded[i] for i in batch], object)),
                (PREDICT_PIXELS, PIXELS, np.stack([pixels[i] for i in batch]))):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            logs.append(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)))
        request = classification_pb2.ClassificationRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=CLASSIFY),
            input=input_pb2.Input(example_list=input_pb2.ExampleList(
                examples=[image_example(encoded[i]) for i in batch])))
        logs.append(prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=request)))
    return logs


def write_warmup_requests(saved_model_dir: Path, model_name: str, image_size: int) -> None:
    """Writes assets.extra/tf_serving_warmup_requests, which TF Serving replays on load."""
    path = saved_model_dir / WARMUP_FILE
    path.parent.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in warmup_logs(model_name, image_size):
            writer.write(log.SerializeToString())


def write_labels(folder: Path, class_names: Sequence[str]) -> Path:
    path = folder / LABELS_FILE
    path.write_text("".join(f"{name}\n" for name in class_names))
    return path
