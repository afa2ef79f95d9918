"""Where each epoch's batches come from: decoded images, or what VGG16 computed of them once.

While the VGG16 base is frozen, an image that is not augmented always yields the same pooled
features, so the head can learn from those instead of from pixels: the validation split (never
augmented) always, and the training split too with --cache_features (with augmentation on, from
--feature_views views of each image, one drawn per image and epoch). Once fine-tuning unfreezes
the base from blockN_conv1, the blocks below stay frozen: with --cache_frozen_blocks both splits
come as those blocks' activations, kept by the same feature pass; otherwise as images again.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from typing import Any

import keras
import tensorflow as tf

from catdog import data, feature_cache
from catdog.config import Config


class Source(enum.Enum):
    """What a batch holds, and so which part of the model it goes through."""

    IMAGES = "images"  # pixels, through the whole model (augmented in training)
    FEATURES = "features"  # pooled VGG16 features, through the head alone
    ACTIVATIONS = "activations"  # the frozen blocks' output, through the blocks above and head


@dataclasses.dataclass(frozen=True)
class Batches:
    """One pass of distributed (inputs, labels) batches, and what their inputs are."""

    source: Source
    dataset: Any  # a tf.distribute DistributedDataset


class EpochInputs:
    """The images of both splits, decoded once, and their features computed on first use."""

    def __init__(self, config: Config, splits: data.Splits, strategy: tf.distribute.Strategy,
                 feature_extractor: keras.Model, precision: str,
                 augmenter: keras.Model | None = None):
        self.config, self.splits, self.strategy = config, splits, strategy
        self.feature_extractor, self.precision = feature_extractor, precision
        self.augmenter = augmenter  # makes the training split's feature views
        self.images = {"train": data.decoded_images(splits.train, config.image_size,
                                                    config.max_image_pixels),
                       "validation": data.decoded_images(splits.validation, config.image_size,
                                                         config.max_image_pixels)}
        self._features: dict[str, feature_cache.Features] = {}
        self._validation: dict[Source, Batches] = {}
        self.feature_seconds = 0.0  # spent computing (or reading) features in this process

    def train_source(self, base_frozen: bool) -> Source:
        if not base_frozen:
            return self._fine_tuning_source()
        return Source.FEATURES if self.config.cache_features else Source.IMAGES

    def validation_source(self, base_frozen: bool) -> Source:
        return Source.FEATURES if base_frozen else self._fine_tuning_source()

    def _fine_tuning_source(self) -> Source:
        return Source.ACTIVATIONS if self.config.frozen_blocks_cached else Source.IMAGES

    def compute_features(self, base_frozen: bool) -> None:
        """Runs the feature pass now, before `Epoch 1/N`, with its own progress bar, when the
        run will use features or activations (so the first epoch's bar measures the epoch
        alone)."""
        for split, source in (("train", self.train_source(base_frozen)),
                              ("validation", self.validation_source(base_frozen))):
            if source is not Source.IMAGES:
                self._features_of(split)

    def train(self, seed: int, base_frozen: bool) -> Batches:
        """This epoch's training batches, shuffled (and their feature views drawn) by `seed`;
        images come from the tf.data service's workers when --data_service names one."""
        source = self.train_source(base_frozen)
        if source is Source.IMAGES and self.config.data_service:
            return Batches(source, self.strategy.experimental_distribute_dataset(
                data.service_batches(self.splits.train, self.config.image_size,
                                     self.config.batch_size, seed, self.config.data_service,
                                     self.config.max_image_pixels)))
        return Batches(source, self._distribute(self._dataset("train", source, seed)))

    def validation(self, base_frozen: bool) -> Batches:
        """The validation batches (the same every epoch, so distributed once)."""
        source = self.validation_source(base_frozen)
        if source not in self._validation:
            self._validation[source] = Batches(
                source, self._distribute(self._dataset("validation", source)))
        return self._validation[source]

    def _dataset(self, split: str, source: Source, seed: int | None = None) -> tf.data.Dataset:
        """The split's batches, shuffled by `seed` unless it is None."""
        if source is Source.ACTIVATIONS:
            return self._features_of(split).activation_batches(self.config.batch_size, seed)
        unbatched = (self._features_of(split).dataset(seed) if source is Source.FEATURES
                     else self.images[split])
        return data.batches(unbatched, self.config.batch_size, shuffle_seed=seed)

    def _distribute(self, batches: tf.data.Dataset):
        return self.strategy.experimental_distribute_dataset(batches)

    def _features_of(self, split: str) -> feature_cache.Features:
        if split not in self._features:
            files = self.splits.train if split == "train" else self.splits.validation
            views = self.config.views if split == "train" else 1  # never augmented
            start = time.perf_counter()
            self._features[split] = feature_cache.cached_features(
                self.feature_extractor, files, self.images[split], self.config, self.precision,
                split, self.augmenter, views)
            self.feature_seconds += time.perf_counter() - start
        return self._features[split]
