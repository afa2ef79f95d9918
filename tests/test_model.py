"""Model: preprocessing inside, frozen VGG16 base, the seed's head, weights loading and errors."""

import keras
import numpy as np
import pytest

from catdog import model as model_lib
from catdog.config import Config
from catdog.errors import CatdogError


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    return model_lib.build_classifier(num_classes=3, image_size=32, weights="none")


def test_base_is_frozen_and_only_the_head_trains(classifier):
    base = model_lib.frozen_base(classifier)
    assert not base.trainable and base.trainable_weights == []
    trainable = sum(int(np.prod(w.shape)) for w in classifier.trainable_weights)
    assert trainable == (512 * 512 + 512) + (512 * 3 + 3)
    assert len(classifier.trainable_weights) == 4


def test_takes_raw_pixels_and_returns_float32_probabilities(classifier):
    assert classifier.input.name == "pixels"
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    probabilities = classifier(pixels, training=False)
    assert probabilities.shape == (4, 3) and probabilities.dtype == "float32"
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, rtol=1e-5)


def test_preprocessing_inside_the_model_is_vgg16_preprocess_input(classifier):
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    inside = classifier.get_layer("vgg16_preprocess")(pixels)
    expected = keras.applications.vgg16.preprocess_input(pixels.copy())
    np.testing.assert_allclose(inside, expected, rtol=1e-6)
    # RGB → BGR, minus the ImageNet channel means.
    np.testing.assert_allclose(inside[..., 0], pixels[..., 2] - 103.939, rtol=1e-5)


def test_weights_from_a_local_file_are_loaded(tmp_path):
    keras.utils.set_random_seed(1)
    source = model_lib.build_base(32, "none")
    path = tmp_path / "vgg16_notop.weights.h5"
    source.save_weights(path)
    keras.utils.set_random_seed(2)
    loaded = model_lib.build_base(32, str(path))
    for a, b in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(a, b)


def test_a_file_that_is_not_vgg16_weights_is_refused(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(CatdogError, match=f"--weights={path} is not a VGG16 no-top weights file"):
        model_lib.build_base(32, str(path))


def test_imagenet_download_failure_says_how_to_pass_a_local_file(monkeypatch, tmp_path):
    # A real download attempt against a port where nothing listens on this machine.
    monkeypatch.setattr(keras.src.applications.vgg16, "WEIGHTS_PATH_NO_TOP",
                        "http://127.0.0.1:9/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    monkeypatch.setattr(keras.src.utils.file_utils.config, "keras_home", lambda: str(tmp_path))
    with pytest.raises(CatdogError, match="could not download the ImageNet VGG16 weights .*"
                                          "pass --weights=/path/to/that/file"):
        model_lib.build_base(32, "imagenet")


def test_augmenter_has_the_layers_the_flags_ask_for():
    def layer_types(**flags):
        augmenter = model_lib.build_augmenter(Config(data_dir="d", **flags))
        return [type(layer).__name__ for layer in augmenter.layers]

    assert layer_types(flip="horizontal", rotation=0.1, zoom=0.2) == [
        "RandomFlip", "RandomRotation", "RandomZoom"]
    assert layer_types(flip="none", rotation=0.0, zoom=0.0) == []


def test_reseeding_makes_an_epochs_augmentation_repeatable():
    augmenter = model_lib.build_augmenter(Config(data_dir="d", rotation=0.2, zoom=0.2))
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")

    def augmented(epoch):
        model_lib.reseed_augmenter(augmenter, seed=5, epoch=epoch)
        return augmenter(images, training=True).numpy()

    np.testing.assert_array_equal(augmented(1), augmented(1))
    assert not np.allclose(augmented(1), augmented(2))
    np.testing.assert_array_equal(augmenter(images, training=False), images)
