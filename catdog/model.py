"""The classifier: VGG16 preprocessing inside the model, a frozen VGG16 base, and a small head.

The model takes raw RGB pixels in 0–255 (float32 [N, S, S, 3], input name `pixels`) and returns
class probabilities, so no consumer ever repeats resizing or scaling beyond decoding to pixels.
Augmentation is a separate model applied by the training step only; it is never exported.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from catdog.config import Config
from catdog.errors import CatdogError

INPUT_NAME = "pixels"
BASE_NAME = "vgg16"
OUTPUT_NAME = "probabilities"
HEAD_UNITS = 512
IMAGENET_WEIGHTS_HINT = (
    "download vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 from Keras' model store on a "
    "machine with internet and pass --weights=/path/to/that/file")


@keras.saving.register_keras_serializable(package="catdog")
class VGG16Preprocess(keras.layers.Layer):
    """`keras.applications.vgg16.preprocess_input` as a layer: RGB 0–255 → BGR, mean-centred.

    A registered layer (not a Lambda) so that the model survives `.h5` saving and reloading.
    """

    def call(self, inputs):
        return keras.applications.vgg16.preprocess_input(inputs)


def build_base(image_size: int, weights: str) -> keras.Model:
    """VGG16 without its top, frozen; `weights` is 'imagenet', 'none' or a weights file path."""
    try:
        base = keras.applications.VGG16(
            include_top=False, weights=None if weights == "none" else weights,
            input_shape=(image_size, image_size, 3), name=BASE_NAME)
    except Exception as error:  # Keras raises bare Exceptions for failed downloads.
        if weights == "imagenet":
            raise CatdogError(f"could not download the ImageNet VGG16 weights ({error}); "
                              f"{IMAGENET_WEIGHTS_HINT}") from error
        raise CatdogError(f"--weights={weights} is not a VGG16 no-top weights file "
                          f"({error})") from error
    base.trainable = False
    return base


def build_classifier(num_classes: int, image_size: int, weights: str) -> keras.Model:
    """Pixels → VGG16Preprocess → frozen VGG16 → GlobalAveragePooling2D → Dense(512) → softmax."""
    pixels = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    x = VGG16Preprocess(name="vgg16_preprocess")(pixels)
    x = build_base(image_size, weights)(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(HEAD_UNITS, activation="relu", name="dense")(x)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                       name=OUTPUT_NAME)(x)
    return keras.Model(pixels, probabilities, name="catdog")


def build_augmenter(config: Config) -> keras.Sequential:
    """The training-time augmentation layers the flags ask for (may be empty)."""
    layers = []
    if config.flip != "none":
        layers.append(keras.layers.RandomFlip(config.flip, seed=config.seed))
    if config.rotation > 0:
        layers.append(keras.layers.RandomRotation(config.rotation, seed=config.seed + 1))
    if config.zoom > 0:
        layers.append(keras.layers.RandomZoom(config.zoom, seed=config.seed + 2))
    return keras.Sequential(layers, name="augmentation")


def reseed_augmenter(augmenter: keras.Model, seed: int, epoch: int) -> None:
    """Sets every random layer's seed state from (seed, epoch), so an epoch's augmentation is the
    same whether the run was interrupted before it or not."""
    for index, state in enumerate(augmenter.variables):
        state.assign(tf.constant([seed + index, epoch * 1_000_003], dtype=state.dtype))


def frozen_base(model: keras.Model) -> keras.Model:
    return model.get_layer(BASE_NAME)
