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
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from catdog import data, data_service, feature_cache, images
from catdog.config import Config
from catdog.errors import CatdogError


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
            return Batches(source, ServiceBatches(
                lambda: self.strategy.experimental_distribute_dataset(data.service_batches(
                    self.splits.train, self.config.image_size, self.config.batch_size, seed,
                    self.config.data_service, self.config.max_image_pixels)),
                self.strategy, self.config, len(self.splits.train)))
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


class ServiceStalled(CatdogError):
    """The tf.data service sent no batch within --data_service_timeout_seconds. Its reader
    thread may be stuck in TensorFlow for good, so the command ends at once on this error."""


class ServiceBatches:
    """An epoch's batches from the tf.data service, made and read by a thread of their own so
    that no wait is unbounded: registering the dataset with the dispatcher and every read block
    inside TensorFlow, retrying, for as long as the service is away; the training loop waits
    at most --data_service_timeout_seconds for each batch instead (and Ctrl-C or SIGTERM
    interrupt that wait as any other). The epoch ends when every image has come, without
    waiting for the service to say so, or when the service ends it early: a worker lost
    mid-epoch takes the images of its unfinished splits with it (DYNAMIC sharding reads each
    at most once), and the log counts them. A reader left blocked by a lost service stays
    behind as an idle daemon thread."""

    def __init__(self, make_dataset: Callable[[], Any], strategy: tf.distribute.Strategy,
                 config: Config, image_count: int):
        self.make_dataset, self.strategy, self.config = make_dataset, strategy, config
        self.expected, self.received = image_count, 0

    def __iter__(self):
        batches: queue.Queue = queue.Queue(maxsize=2)

        def read() -> None:
            try:
                for batch in self.make_dataset():
                    batches.put(("batch", batch))
            except Exception as error:  # noqa: BLE001 (handed to the training thread)
                batches.put(("error", error))
            batches.put(("end", None))

        threading.Thread(target=read, name="data-service-reader", daemon=True).start()
        while self.received < self.expected:
            try:
                kind, value = batches.get(timeout=self.config.data_service_timeout_seconds)
            except queue.Empty:
                raise ServiceStalled(self._stalled()) from None
            if kind == "error":
                why = (images.short_tf_error(value) if isinstance(value, tf.errors.OpError)
                       else (str(value).splitlines() or [type(value).__name__])[0])
                raise ServiceStalled(f"the tf.data service at {self.config.data_service} "
                                     f"failed: {why}; {self._resume()}") from None
            if kind == "end":
                logging.warning("the tf.data service delivered %d of %d training images this "
                                "epoch: a worker was lost mid-epoch with its unfinished splits "
                                "(each image is read at most once)", self.received,
                                self.expected)
                return
            self.received += sum(int(tf.shape(labels)[0]) for labels in
                                 self.strategy.experimental_local_results(value[1]))
            yield value

    def _stalled(self) -> str:
        service = self.config.data_service
        why = ("its dispatcher does not answer" if not data_service.dispatcher_answers(service)
               else "its dispatcher answers, but no worker sent a batch (a worker is gone or "
                    "stalled, and the dispatcher has not dropped it)")
        return (f"no training batch from the tf.data service at {service} in "
                f"{self.config.data_service_timeout_seconds:g} s (--data_service_timeout_seconds)"
                f" after {self.received} of {self.expected} images: {why}; {self._resume()}")

    def _resume(self) -> str:
        return (f"finished epochs are saved in {self.config.run_dir}: restart the service and run "
                "the same command to resume")
