"""A cache of pooled VGG16 features, computed once per image while the base is frozen.

With the base frozen and no augmentation, an image's features never change, so the head can train
on them directly: one forward pass through VGG16 per image instead of one per epoch. With
augmentation on, `--feature_views=K` computes the features of K views of each training image once
(view 0 the image itself, views 1..K-1 seeded augmentations of it), and each epoch draws one view
per image with the epoch's seed: K passes through VGG16 instead of one per epoch. Features are
kept in memory, or on disk under --feature_cache_dir, in a folder named by a key over everything
they depend on (base weights, image size, precision, the files and their sizes and times, the
views and their augmentation), so a stale cache is never used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from catdog import atomic, data
from catdog import model as model_lib
from catdog.config import Config
from catdog.errors import CatdogError

_FILE = "features.npz"
_FORMAT = 2  # features stored as [views, images, 512]
_VIEW_STREAM = 1 << 20  # augmentation seeds of views, apart from those of epochs (0, 1, 2, ...)


@dataclasses.dataclass(frozen=True)
class Features:
    """The pooled features of a split's images: `views[k, i]` is view k of image i."""

    views: np.ndarray  # float32 [K, N, 512]
    labels: np.ndarray  # [N]

    def dataset(self, seed: int | None = None) -> tf.data.Dataset:
        """(features, label) pairs, one view per image: drawn with `seed`, or view 0 (the
        unaugmented image) when `seed` is None. The same seed draws the same views, so a
        resumed run's epoch sees what an uninterrupted one's would."""
        count = len(self.labels)
        if seed is None or len(self.views) == 1:
            chosen = self.views[0]
        else:
            picks = np.random.default_rng(seed).integers(0, len(self.views), count)
            chosen = self.views[picks, np.arange(count)]
        return tf.data.Dataset.from_tensor_slices((chosen, self.labels))


def _weights_identity(config: Config) -> object:
    if config.weights == "none":
        return ["random", config.seed]  # random weights are a function of the seed
    if config.weights == "imagenet":
        return "imagenet"
    stat = os.stat(config.weights)
    return [os.path.abspath(config.weights), stat.st_size, stat.st_mtime_ns]


def cache_key(config: Config, files: data.ImageFiles, precision: str, views: int = 1) -> str:
    """A digest of everything the features of `files` depend on."""
    file_stats = files.fingerprint or [[p, os.stat(p).st_size, os.stat(p).st_mtime_ns]
                                       for p in files.paths]
    content = {"weights": _weights_identity(config), "image_size": config.image_size,
               "precision": precision, "files": file_stats, "labels": list(files.labels),
               "keras": keras.__version__, "format": _FORMAT, "views": views}
    if views > 1:
        content["augmentation"] = [config.flip, config.rotation, config.zoom, config.seed]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:24]


def compute_features(extractor: keras.Model, decoded: tf.data.Dataset, batch_size: int,
                     count: int, name: str, augmenter: keras.Model | None = None,
                     progbar: keras.utils.Progbar | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Runs the feature extractor over a decoded-image dataset, through `augmenter` (in training
    mode) first when one is given; returns float32 (features, labels)."""
    size = extractor.input_shape[1]
    spec = tf.TensorSpec([None, size, size, 3], tf.float32)
    if augmenter is None:
        forward = tf.function(lambda images: extractor(images, training=False),
                              input_signature=[spec])  # one trace for every batch size
    else:
        forward = tf.function(lambda images: extractor(augmenter(images, training=True),
                                                       training=False), input_signature=[spec])
    if progbar is None:
        logging.info("computing VGG16 features for %d %s images", count, name)
        progbar = keras.utils.Progbar(count, unit_name="image")  # its own bar, ETA, ms/image
    features, labels = [], []
    for images, batch_labels in data.batches(decoded, batch_size):
        features.append(tf.cast(forward(images), tf.float32).numpy())
        labels.append(batch_labels.numpy())
        progbar.add(len(batch_labels))
    return np.concatenate(features), np.concatenate(labels)


def compute_views(extractor: keras.Model, decoded: tf.data.Dataset, batch_size: int,
                  count: int, name: str, augmenter: keras.Model | None,
                  views: int, seed: int) -> Features:
    """Features of `views` views of every image: view 0 unaugmented, view k ≥ 1 through
    `augmenter` reseeded from (`seed`, k), so the same flags give the same views."""
    logging.info("computing VGG16 features for %d %s images%s", count, name,
                 f" ({views} views each)" if views > 1 else "")
    progbar = keras.utils.Progbar(count * views, unit_name="image")
    stacked, labels = [], None
    for view in range(views):
        if view:
            model_lib.reseed_augmenter(augmenter, seed, _VIEW_STREAM + view)
        features, labels = compute_features(extractor, decoded, batch_size, count, name,
                                            augmenter if view else None, progbar)
        stacked.append(features)
    return Features(np.stack(stacked), labels)


def cached_features(extractor: keras.Model, files: data.ImageFiles, decoded: tf.data.Dataset,
                    config: Config, precision: str, name: str,
                    augmenter: keras.Model | None = None, views: int = 1) -> Features:
    """The features of `files` (`views` views of each): read from --feature_cache_dir when a
    matching entry exists, else computed from `decoded` (the run's own
    `data.decoded_images(files)`, so the images are decoded and held in memory once) and
    written there, atomically, when the flag is set."""
    key = cache_key(config, files, precision, views)
    folder = Path(config.feature_cache_dir) / f"{name}-{key}" if config.feature_cache_dir else None
    if folder and (folder / _FILE).exists():
        with np.load(folder / _FILE) as stored:
            features = Features(stored["features"], stored["labels"])
        logging.info("%s features: read %d from %s", name, features.views.size // 512, folder)
        return features
    features = compute_views(extractor, decoded, config.batch_size, len(files), name, augmenter,
                             views, config.seed)
    logging.info("%s features: computed %d", name, features.views.shape[0] * len(files))
    if folder:
        _write_atomically(folder, features)
    return features


def _write_atomically(folder: Path, features: Features) -> None:
    """One cache entry, whole; a disk-full or other write error costs the cache, not the run."""
    atomic.remove_leftovers(folder.parent)
    if folder.exists():  # another run wrote the same entry first; theirs is as good as ours
        return
    try:
        with atomic.atomic_dir(folder) as tmp:
            np.savez(tmp / _FILE, features=features.views, labels=features.labels)
    except CatdogError as error:
        logging.warning("feature cache not written (%s); training goes on without it", error)
