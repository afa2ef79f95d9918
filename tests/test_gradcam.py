"""catdog.gradcam: heat maps where the evidence is, by construction; the split of catdog's
classifier is the classifier; the overlay is the photo with the map blended over it."""

import keras
import numpy as np
import tensorflow as tf

from catdog import gradcam
from catdog import model as model_lib


def test_the_heat_map_lights_where_the_class_evidence_is():
    """Feature maps [1, 4, 4, 2]: channel 0 holds a blob in the top-left 2×2 corner; the class-1
    logit is the mean of channel 0, so its evidence lies there and nowhere else. Channel 1
    (everywhere, bottom-right strongest) does not count, so it must not show."""
    maps = np.zeros((1, 4, 4, 2), np.float32)
    maps[0, :2, :2, 0] = 1.0
    maps[0, :, :, 1] = 0.1
    maps[0, 3, 3, 1] = 5.0

    def rest(features):
        logit = tf.reduce_mean(features[..., 0], axis=(1, 2))
        return tf.nn.softmax(tf.stack([tf.zeros_like(logit), logit], axis=1))

    heat, probabilities = gradcam.grad_cam(tf.identity, rest, maps, np.array([1]))
    expected = np.zeros((4, 4))
    expected[:2, :2] = 1.0
    np.testing.assert_allclose(heat[0], expected, atol=1e-6)
    assert probabilities[0, 1] > 0.5
    # For class 0 the same evidence counts against: no positive evidence, an all-zero map.
    heat, _ = gradcam.grad_cam(tf.identity, rest, maps, np.array([0]))
    assert not heat.any()


def test_the_two_halves_are_catdogs_classifier():
    keras.utils.set_random_seed(0)
    model = model_lib.build_classifier(2, 64, "none")
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    features, rest = gradcam.split_at_last_conv(model)
    maps = features(pixels)
    assert maps.shape == (3, 4, 4, 512)  # block5_conv3 at 64 px, before the last pooling
    np.testing.assert_allclose(rest(maps).numpy(), model(pixels).numpy(), atol=1e-6)
    heat = gradcam.heatmaps(model, pixels, batch_size=2)
    assert heat.shape == (3, 4, 4) and heat.min() >= 0 and heat.max() <= 1


def test_the_overlay_is_the_photo_tinted_hot_where_the_map_is_hot():
    photo = np.full((32, 48, 3), 128, np.uint8)
    heat = np.zeros((2, 3), np.float32)
    heat[0, 0] = 1.0
    shown = gradcam.overlay(photo, heat)
    assert shown.shape == photo.shape and shown.dtype == np.uint8
    hot, cold = shown[2, 2], shown[-2, -2]  # jet: 1.0 is dark red, 0.0 dark blue
    assert hot[0] > hot[2] and cold[2] > cold[0]
