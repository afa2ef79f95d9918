"""Where the model looked: Grad-CAM (Selvaraju et al., 2017) on VGG16's last convolution.

For an image and a class, the gradient of the class's probability with respect to the feature
maps of `block5_conv3` (the last convolutional layer of VGG16's last block), averaged over the
map, weighs each of its 512 channels; the ReLU of the weighted sum, scaled to [0, 1], is the heat
map (9×9 at 150 px). One forward pass per batch of images, and a backward pass through the head
alone.

`heatmaps` takes catdog's Keras classifier: the `.h5` as it loads, or a SavedModel version
rebuilt as Keras from its own variables (`inference.load_keras_model`), since a SavedModel's
signatures answer probabilities only, not gradients with respect to an inner layer.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from matplotlib import colormaps

from catdog import model as model_lib

LAST_CONV = "block5_conv3"
OVERLAY_OPACITY = 0.45

Network = Callable[[tf.Tensor], tf.Tensor]


def split_at_last_conv(model: keras.Model) -> tuple[Network, Network]:
    """catdog's classifier as two halves around `block5_conv3`: pixels → its feature maps, and
    feature maps → probabilities. VGG16 is a chain of layers, so each half calls them in order."""
    base = model.get_layer(model_lib.BASE_NAME)
    chain = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    cut = 1 + next(i for i, layer in enumerate(chain) if layer.name == LAST_CONV)
    preprocess = model.get_layer("vgg16_preprocess")
    head = [model.get_layer(name) for name in (model_lib.POOL_NAME, "dense",
                                               model_lib.OUTPUT_NAME)]

    def features(pixels: tf.Tensor) -> tf.Tensor:
        x = preprocess(pixels)
        for layer in chain[:cut]:
            x = layer(x, training=False)
        return x

    def rest(maps: tf.Tensor) -> tf.Tensor:
        x = maps
        for layer in chain[cut:] + head:
            x = layer(x, training=False)
        return x

    return features, rest


def grad_cam(features: Network, rest: Network, pixels: np.ndarray,
             class_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(heat maps [N, h, w] in [0, 1], probabilities [N, C]) for `class_ids` (default: each
    image's predicted class). A map with no positive evidence is all zeros."""
    # The forward pass up to the maps stays outside the tape: only maps → class needs a
    # gradient, and recording VGG16's convolutions would triple the cost.
    maps = tf.cast(features(tf.constant(pixels, tf.float32)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(maps)
        probabilities = tf.cast(rest(maps), tf.float32)
        if class_ids is None:
            class_ids = tf.argmax(probabilities, axis=1).numpy()
        score = tf.gather(probabilities, class_ids, axis=1, batch_dims=1)
    gradients = tape.gradient(score, maps)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1)).numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0), probabilities.numpy()


def heatmaps(model: keras.Model, pixels: np.ndarray, class_ids: np.ndarray | None = None,
             batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps [N, h, w] of catdog's classifier for float32 RGB pixels [N, S, S, 3]."""
    features, rest = split_at_last_conv(model)
    features = tf.function(features)  # one graph for every batch: a third faster than eager
    maps = []
    for start in range(0, len(pixels), batch_size):
        ids = None if class_ids is None else class_ids[start:start + batch_size]
        maps.append(grad_cam(features, rest, pixels[start:start + batch_size], ids)[0])
    return np.concatenate(maps) if maps else np.zeros((0, 0, 0), np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray,
            opacity: float = OVERLAY_OPACITY) -> np.ndarray:
    """The photo (uint8 [H, W, 3]) with the heat map, resized to it and coloured by matplotlib's
    'jet' colour map, blended over it."""
    size = image.shape[:2]
    resized = tf.image.resize(heatmap[..., None], size, method="bilinear").numpy()[..., 0]
    colours = colormaps["jet"](np.clip(resized, 0, 1))[..., :3] * 255
    return np.clip((1 - opacity) * image + opacity * colours, 0, 255).astype(np.uint8)
