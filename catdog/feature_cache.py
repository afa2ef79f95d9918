"""A cache of pooled VGG16 features, computed once per image while the base is frozen.

With the base frozen and no augmentation, an image's features never change, so the head can train
on them directly: one forward pass through VGG16 per image instead of one per epoch. Features are
kept in memory, or on disk under --feature_cache_dir, in a folder named by a key over everything
they depend on (base weights, image size, precision, the files and their sizes and times), so a
stale cache is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from catdog import atomic, data
from catdog.config import Config
from catdog.errors import CatdogError

_FILE = "features.npz"


def _weights_identity(config: Config) -> object:
    if config.weights == "none":
        return ["random", config.seed]  # random weights are a function of the seed
    if config.weights == "imagenet":
        return "imagenet"
    stat = os.stat(config.weights)
    return [os.path.abspath(config.weights), stat.st_size, stat.st_mtime_ns]


def cache_key(config: Config, files: data.ImageFiles, precision: str) -> str:
    """A digest of everything the features of `files` depend on."""
    file_stats = [[p, os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in files.paths]
    content = {"weights": _weights_identity(config), "image_size": config.image_size,
               "precision": precision, "files": file_stats, "labels": list(files.labels),
               "keras": keras.__version__}
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:24]


def compute_features(extractor: keras.Model, decoded: tf.data.Dataset, batch_size: int,
                     count: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Runs the feature extractor over a decoded-image dataset; returns (features, labels)."""
    size = extractor.input_shape[1]
    predict = tf.function(lambda images: extractor(images, training=False), input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.float32)])  # one trace for every batch size
    logging.info("computing VGG16 features for %d %s images", count, name)
    progbar = keras.utils.Progbar(count, unit_name="image")  # its own bar, ETA and ms/image
    features, labels = [], []
    done = 0
    for images, batch_labels in data.batches(decoded, batch_size):
        features.append(predict(images).numpy())
        labels.append(batch_labels.numpy())
        done += len(batch_labels)
        progbar.update(done)
    return np.concatenate(features), np.concatenate(labels)


def cached_features(extractor: keras.Model, files: data.ImageFiles, decoded: tf.data.Dataset,
                    config: Config, precision: str, name: str) -> tf.data.Dataset:
    """(features, label) pairs of `files`: read from --feature_cache_dir when a matching entry
    exists, else computed from `decoded` (the run's own `data.decoded_images(files)`, so the
    images are decoded and held in memory once) and written there, atomically, when the flag
    is set."""
    folder = (Path(config.feature_cache_dir) / f"{name}-{cache_key(config, files, precision)}"
              if config.feature_cache_dir else None)
    if folder and (folder / _FILE).exists():
        with np.load(folder / _FILE) as stored:
            features, labels = stored["features"], stored["labels"]
        logging.info("%s features: read %d from %s", name, len(labels), folder)
    else:
        features, labels = compute_features(extractor, decoded, config.batch_size, len(files),
                                            name)
        logging.info("%s features: computed %d", name, len(labels))
        if folder:
            _write_atomically(folder, features, labels)
    return tf.data.Dataset.from_tensor_slices((features, labels))


def _write_atomically(folder: Path, features: np.ndarray, labels: np.ndarray) -> None:
    """One cache entry, whole; a disk-full or other write error costs the cache, not the run."""
    atomic.remove_leftovers(folder.parent)
    if folder.exists():  # another run wrote the same entry first; theirs is as good as ours
        return
    try:
        with atomic.atomic_dir(folder) as tmp:
            np.savez(tmp / _FILE, features=features, labels=labels)
    except CatdogError as error:
        logging.warning("feature cache not written (%s); training goes on without it", error)
