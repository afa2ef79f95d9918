"""catdog.inputs: while the base is frozen, un-augmented inputs come as features computed once."""

import numpy as np
import pytest
import tensorflow as tf

from catdog import data, distribute, feature_cache
from catdog.config import Config
from catdog.inputs import EpochInputs, Source
from catdog.steps import Trainer


def epoch_inputs(dataset_dir, monkeypatch, **overrides):
    """EpochInputs over `dataset_dir`, and the list of splits whose features were computed."""
    config = Config(**{**dict(data_dir=str(dataset_dir), weights="none", image_size=32,
                              batch_size=8, flip="none", zoom=0.0, strategy="default"),
                       **overrides})
    trainer = Trainer(config, 2, distribute.setup_distribution(config))
    computed = []
    real = feature_cache.compute_features

    def counting(extractor, decoded, batch_size, count, name, *args):
        computed.append(name)
        return real(extractor, decoded, batch_size, count, name, *args)

    monkeypatch.setattr(feature_cache, "compute_features", counting)
    inputs = EpochInputs(config, data.prepare_splits(config), trainer.strategy,
                         trainer.feature_extractor, "float32", trainer.augmenter)
    return inputs, computed


def first_inputs(batches) -> tf.Tensor:
    return next(iter(batches.dataset))[0]


@pytest.mark.parametrize("cache_features, frozen_train", [(False, Source.IMAGES),
                                                          (True, Source.FEATURES)])
def test_each_split_uses_features_only_while_the_base_is_frozen(
        dataset_dir, monkeypatch, cache_features, frozen_train):
    inputs, computed = epoch_inputs(dataset_dir, monkeypatch, cache_features=cache_features)
    inputs.compute_features(base_frozen=True)
    assert computed == (["train", "validation"] if cache_features else ["validation"])
    train, validation = inputs.train(1, base_frozen=True), inputs.validation(base_frozen=True)
    assert (train.source, validation.source) == (frozen_train, Source.FEATURES)
    assert first_inputs(validation).shape[1:] == (512,)
    assert first_inputs(train).shape[1:] == ((512,) if cache_features else (32, 32, 3))
    fine_tuning = inputs.train(2, base_frozen=False), inputs.validation(base_frozen=False)
    assert [b.source for b in fine_tuning] == [Source.IMAGES, Source.IMAGES]
    assert first_inputs(fine_tuning[1]).shape[1:] == (32, 32, 3)


def test_features_are_computed_once_and_validation_batches_reused(dataset_dir, monkeypatch):
    inputs, computed = epoch_inputs(dataset_dir, monkeypatch, cache_features=True)
    for epoch in (1, 2, 3):
        inputs.train(epoch, base_frozen=True)
        assert inputs.validation(base_frozen=True) is inputs.validation(base_frozen=True)
    assert computed == ["train", "validation"]


def test_each_epoch_has_its_own_seeded_order(dataset_dir, monkeypatch):
    inputs, _ = epoch_inputs(dataset_dir, monkeypatch)
    order = [np.concatenate([labels.numpy() for _, labels in inputs.train(seed, True).dataset])
             for seed in (1, 1, 2)]
    np.testing.assert_array_equal(order[0], order[1])
    assert not np.array_equal(order[0], order[2])


def test_feature_views_augment_training_only(dataset_dir, monkeypatch):
    """With --feature_views=3 the training split is computed three times (the image and two
    augmented views) and validation once, unaugmented: its features equal the image's own."""
    inputs, computed = epoch_inputs(dataset_dir, monkeypatch, cache_features=True,
                                    feature_views=3, flip="horizontal", zoom=0.3)
    inputs.compute_features(base_frozen=True)
    assert computed == ["train"] * 3 + ["validation"]
    validation = np.concatenate([f.numpy() for f, _ in inputs.validation(True).dataset])
    plain, _ = feature_cache.compute_features(
        inputs.feature_extractor, inputs.images["validation"], 8, len(inputs.splits.validation),
        "validation")
    np.testing.assert_allclose(validation, plain, atol=1e-6)
