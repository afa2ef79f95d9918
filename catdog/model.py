"""The classifier: VGG16 preprocessing inside the model, a frozen VGG16 base, and a small head.

The model takes raw RGB pixels in 0–255 (float32 [N, S, S, 3], input name `pixels`) and returns
class probabilities, so no consumer ever repeats resizing or scaling beyond decoding to pixels.
Augmentation is a separate model applied by the training step only; it is never exported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

from catdog import contract
from catdog.config import VGG16_LAYERS, Config
from catdog.errors import CatdogError

INPUT_NAME = contract.PIXELS  # the serving signatures feed this name
BASE_NAME = "vgg16"
OUTPUT_NAME = "probabilities"
POOL_NAME = "pool"
HEAD_UNITS = 512
HEAD_INPUT_UNITS = 512  # VGG16's last block has 512 channels
IMAGENET_WEIGHTS_HINT = (
    "download vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 from Keras' model store on a "
    "machine with internet and pass --weights=/path/to/that/file")


VGG16_BGR_MEANS = (103.939, 116.779, 123.68)  # keras.applications.vgg16.preprocess_input


def vgg16_preprocess(name: str = "vgg16_preprocess") -> keras.layers.Layer:
    """`keras.applications.vgg16.preprocess_input` (RGB 0–255 → BGR, mean-centred) as a frozen
    built-in 1×1 convolution: its kernel swaps the channels and its bias subtracts the means, so
    the result is exact and the `.h5` file loads with plain `keras.models.load_model`, in a
    process that has never imported catdog."""
    swap = np.zeros((1, 1, 3, 3), np.float32)
    for rgb, bgr in ((0, 2), (1, 1), (2, 0)):
        swap[0, 0, rgb, bgr] = 1.0
    return keras.layers.Conv2D(
        3, 1, name=name, trainable=False, dtype="float32",
        kernel_initializer=keras.initializers.Constant(swap),
        bias_initializer=keras.initializers.Constant(-np.array(VGG16_BGR_MEANS, np.float32)))


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


def build_classifier(num_classes: int, image_size: int, weights: str,
                     base: keras.Model | None = None) -> keras.Model:
    """Pixels → VGG16 preprocessing → frozen VGG16 → GlobalAveragePooling2D → Dense(512) →
    softmax; around `base` when one is given (built with `build_base`), else a new one."""
    pixels = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    x = vgg16_preprocess()(pixels)
    x = (base or build_base(image_size, weights))(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name=POOL_NAME)(x)
    x = keras.layers.Dense(HEAD_UNITS, activation="relu", name="dense")(x)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                       name=OUTPUT_NAME)(x)
    return keras.Model(pixels, probabilities, name=contract.DEFAULT_MODEL_NAME)


def compute_policy(model: keras.Model) -> str:
    """The policy the classifier's head computes in: float32, mixed_bfloat16 or mixed_float16."""
    return model.get_layer("dense").dtype_policy.name


@contextlib.contextmanager
def global_policy(name: str) -> Iterator[None]:
    """Keras' global precision policy is `name` inside the block, and what it was after it."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def in_policy(model: keras.Model, policy: str) -> keras.Model:
    """The same classifier with the same weights, computing under `policy` (the model itself
    when it already does): a model trained under mixed_bfloat16 is exported in float32, which
    runs well on every CPU, by rebuilding it under float32 and copying each layer's weights."""
    if compute_policy(model) == policy:
        return model
    with global_policy(policy):
        copy = build_classifier(model.output_shape[-1], model.input_shape[1], "none")
    _copy_weights(model, copy)
    return copy


def _copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Layer by layer, by name: the flat weight order changes when fine-tuning has made some
    base layers trainable, a layer's own order does not."""
    for layer in target.layers:
        if isinstance(layer, keras.Model):
            _copy_weights(source.get_layer(layer.name), layer)
        elif layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


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


# A prime stride between epochs' seeds, so that no (seed, epoch) pair repeats another's stream.
_EPOCH_SEED_STRIDE = 1_000_003


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order and augmentation, the same on every (re)start."""
    return (seed * _EPOCH_SEED_STRIDE + epoch) % (2**31 - 1)


def reseed_augmenter(augmenter: keras.Model, seed: int, epoch: int) -> None:
    """Sets every random layer's seed state from (seed, epoch), so an epoch's augmentation is the
    same whether the run was interrupted before it or not."""
    for index, state in enumerate(augmenter.variables):
        state.assign(tf.constant([seed + index, epoch * _EPOCH_SEED_STRIDE], dtype=state.dtype))


def frozen_base(model: keras.Model) -> keras.Model:
    return model.get_layer(BASE_NAME)


def feature_extractor(model: keras.Model) -> keras.Model:
    """Pixels → pooled VGG16 features [N, 512]: the part of the model a frozen base fixes."""
    return keras.Model(model.input, model.get_layer(POOL_NAME).output, name="features")


def head(model: keras.Model) -> keras.Model:
    """Pooled features → probabilities, sharing the classifier's own head layers and weights."""
    features = keras.Input((HEAD_INPUT_UNITS,), name="features")
    x = model.get_layer("dense")(features)
    return keras.Model(features, model.get_layer(OUTPUT_NAME)(x), name="head")


def layer_below(layer_name: str) -> str:
    """The VGG16 layer just below `layer_name`: the last one frozen when fine-tuning starts
    there."""
    return VGG16_LAYERS[VGG16_LAYERS.index(layer_name) - 1]


def split_at(model: keras.Model, first_trainable: str) -> tuple[keras.Model, keras.Model]:
    """The classifier cut below VGG16 layer `first_trainable`, sharing its layers and weights:
    (lower, upper). `lower` maps pixels to [the last frozen layer's output, pooled features] in
    one pass; `upper` maps that output (input `activations`) through the trainable blocks and
    the head to probabilities. Fine-tuning trains `upper` on activations `lower` computed once."""
    base_layers = frozen_base(model).layers[1:]  # [0] is the base's InputLayer
    cut = [layer.name for layer in base_layers].index(first_trainable)
    pool, dense, output = (model.get_layer(n) for n in (POOL_NAME, "dense", OUTPUT_NAME))

    def through(x, layers):
        for layer in layers:
            x = layer(x)
        return x

    activations = through(model.get_layer("vgg16_preprocess")(model.input), base_layers[:cut])
    pooled = pool(through(activations, base_layers[cut:]))
    lower = keras.Model(model.input, [activations, pooled], name="frozen_blocks")
    cached = keras.Input(activations.shape[1:], name="activations")
    upper = keras.Model(cached, output(dense(pool(through(cached, base_layers[cut:])))),
                        name="trainable_blocks")
    return lower, upper


def unfreeze_from(model: keras.Model, layer_name: str) -> None:
    """Makes the base trainable from `layer_name` (a VGG16 layer) to its top; earlier layers
    stay frozen."""
    base = frozen_base(model)
    names = [layer.name for layer in base.layers]
    if layer_name not in names:
        raise CatdogError(f"--fine_tune_from={layer_name} is not a VGG16 layer; use one of "
                          f"{', '.join(VGG16_LAYERS)}")
    base.trainable = True
    start = names.index(layer_name)
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= start
