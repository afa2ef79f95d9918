"""A cache of pooled VGG16 features, computed once per image while the base is frozen.

With the base frozen and no augmentation, an image's features never change, so the head can train
on them directly: one forward pass through VGG16 per image instead of one per epoch. With
augmentation on, `--feature_views=K` computes the features of K views of each training image once
(view 0 the image itself, views 1..K-1 seeded augmentations of it), and each epoch draws one view
per image with the epoch's seed: K passes through VGG16 instead of one per epoch. Features are
kept in memory, or on disk under --feature_cache_dir, in a folder named by a key over everything
they depend on (the base weights' content, image size, precision, the files and their sizes and
times, the views and their augmentation), so a stale cache is never used. Each entry carries the
sha256 of its files, checked on every read: a damaged or partial entry (truncated, emptied,
overwritten) is one warning line naming it, and is computed again.

When fine-tuning will unfreeze VGG16 from blockN_conv1 (`--cache_frozen_blocks`), the same pass
also keeps each view's output of the last frozen layer (block3_pool for block4_conv1: 18×18×256
at 150 px), since the blocks below the cut never change either: fine-tuning then runs only the
blocks above it and the head. Those activations are held in memory up to
ACTIVATIONS_IN_MEMORY_BYTES and are otherwise written to disk and memory-mapped; that file is
allocated whole before any of it is mapped, so a full disk is the usual `cannot write` line, not
a SIGBUS at the first page the disk has no room for.
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
from catdog.terminal import ProgressLine

_FILE = "features.npz"
_ACTIVATIONS_FILE = "activations.npy"  # float32 [views, images, H, W, C], beside _FILE
_DIGESTS_FILE = "sha256.json"  # {file name: sha256} of the entry's files, written last
_FORMAT = 3  # features stored as [views, images, 512]; entries carry their digests
# Frozen-block activations above this are memory-mapped from disk instead of held in memory
# (documented with --cache_frozen_blocks): 150 px, block3_pool, 2 views of 1980 photos and 988
# validation ones take 1.6 GB.
ACTIVATIONS_IN_MEMORY_BYTES = 4 << 30
_VIEW_STREAM = 1 << 20  # augmentation seeds of views, apart from those of epochs (0, 1, 2, ...)


@dataclasses.dataclass(frozen=True)
class Features:
    """The pooled features of a split's images: `views[k, i]` is view k of image i; with
    `activations`, the last frozen layer's output of the same views (in memory or mapped)."""

    views: np.ndarray  # float32 [K, N, 512]
    labels: np.ndarray  # [N]
    activations: np.ndarray | None = None  # float32 [K, N, H, W, C]

    def _picks(self, seed: int | None) -> np.ndarray:
        """The view of each image an epoch seeded `seed` trains on (view 0 when None)."""
        count = len(self.labels)
        if seed is None or len(self.views) == 1:
            return np.zeros(count, np.int64)
        return np.random.default_rng(seed).integers(0, len(self.views), count)

    def dataset(self, seed: int | None = None) -> tf.data.Dataset:
        """(features, label) pairs, one view per image: drawn with `seed`, or view 0 (the
        unaugmented image) when `seed` is None. The same seed draws the same views, so a
        resumed run's epoch sees what an uninterrupted one's would."""
        chosen = self.views[self._picks(seed), np.arange(len(self.labels))]
        return tf.data.Dataset.from_tensor_slices((chosen, self.labels))

    def activation_batches(self, batch_size: int, seed: int | None = None) -> tf.data.Dataset:
        """(activations, labels) batches of the views `dataset(seed)` draws, in the order
        `data.batches` gives images shuffled by `seed`, so fine-tuning on them matches
        fine-tuning on the images. Only indices are shuffled; each batch is gathered from the
        (possibly memory-mapped) array, so nothing holds a second copy of it."""
        count, picks = len(self.labels), self._picks(seed)
        dataset = tf.data.Dataset.from_tensor_slices((np.arange(count), self.labels))
        if seed is not None:
            dataset = dataset.shuffle(max(count, 1), seed=seed, reshuffle_each_iteration=False)

        def gather(indices: np.ndarray) -> np.ndarray:
            return np.asarray(self.activations[picks[indices], indices], np.float32)

        shape = [None, *self.activations.shape[2:]]
        return dataset.batch(batch_size).map(
            lambda indices, labels: (tf.ensure_shape(
                tf.numpy_function(gather, [indices], tf.float32), shape), labels),
            num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _weights_identity(config: Config) -> object:
    """What the base weights are: their content's sha256 for a file (a file rewritten with its
    size and time kept, as `cp -p`, `rsync -a` or `tar x` do, is still told apart; hashing 59 MB
    takes 0.1 s, so it is not remembered between runs)."""
    if config.weights == "none":
        return ["random", config.seed]  # random weights are a function of the seed
    if config.weights == "imagenet":
        return "imagenet"  # Keras checks the downloaded file's hash itself
    return ["sha256", data.sha256_of(Path(config.weights))]


def cache_key(config: Config, files: data.ImageFiles, precision: str, views: int = 1,
              frozen_to: str = "") -> str:
    """A digest of everything the features of `files` (and, with `frozen_to`, that layer's
    activations) depend on."""
    file_stats = files.fingerprint or [[p, os.stat(p).st_size, os.stat(p).st_mtime_ns]
                                       for p in files.paths]
    content = {"weights": _weights_identity(config), "image_size": config.image_size,
               "precision": precision, "files": file_stats, "labels": list(files.labels),
               "keras": keras.__version__, "format": _FORMAT, "views": views}
    if views > 1:
        content["augmentation"] = [config.flip, config.rotation, config.zoom, config.seed]
    if frozen_to:
        content["frozen_to"] = frozen_to
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:24]


def compute_features(extractor: keras.Model, decoded: tf.data.Dataset, batch_size: int,
                     count: int, name: str, augmenter: keras.Model | None = None,
                     progress: ProgressLine | None = None,
                     activations: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Runs the feature extractor over a decoded-image dataset, through `augmenter` (in training
    mode) first when one is given; returns float32 (features, labels). An extractor that also
    yields the last frozen layer's output (`model.split_at`) writes it into `activations`
    ([count, H, W, C], possibly memory-mapped) batch by batch."""
    size = extractor.input_shape[1]
    spec = tf.TensorSpec([None, size, size, 3], tf.float32)
    if augmenter is None:
        forward = tf.function(lambda images: extractor(images, training=False),
                              input_signature=[spec])  # one trace for every batch size
    else:
        forward = tf.function(lambda images: extractor(augmenter(images, training=True),
                                                       training=False), input_signature=[spec])
    if progress is None:
        logging.info("computing VGG16 features for %d %s images", count, name)
    features, labels, done = [], [], 0
    for images, batch_labels in data.batches(decoded, batch_size):
        outputs = forward(images)
        if activations is not None:
            block, outputs = outputs
            activations[done:done + len(batch_labels)] = tf.cast(block, tf.float32).numpy()
        features.append(tf.cast(outputs, tf.float32).numpy())
        labels.append(batch_labels.numpy())
        done += len(batch_labels)
        if progress is not None:
            progress.add(len(batch_labels))
    return np.concatenate(features), np.concatenate(labels)


def compute_views(extractor: keras.Model, decoded: tf.data.Dataset, batch_size: int,
                  count: int, name: str, augmenter: keras.Model | None,
                  views: int, seed: int, activations: np.ndarray | None = None) -> Features:
    """Features of `views` views of every image: view 0 unaugmented, view k ≥ 1 through
    `augmenter` reseeded from (`seed`, k), so the same flags give the same views; with
    `activations` ([views, count, H, W, C]), the frozen blocks' output of each view too."""
    logging.info("computing VGG16 features for %d %s images%s", count, name,
                 f" ({views} views each)" if views > 1 else "")
    stacked, labels = [], None
    with ProgressLine(count * views, "image") as progress:
        for view in range(views):
            if view:
                model_lib.reseed_augmenter(augmenter, seed, _VIEW_STREAM + view)
            features, labels = compute_features(
                extractor, decoded, batch_size, count, name, augmenter if view else None,
                progress, None if activations is None else activations[view])
            stacked.append(features)
    return Features(np.stack(stacked), labels, activations)


def cached_features(extractor: keras.Model, files: data.ImageFiles, decoded: tf.data.Dataset,
                    config: Config, precision: str, name: str,
                    augmenter: keras.Model | None = None, views: int = 1) -> Features:
    """The features of `files` (`views` views of each, with the frozen blocks' activations when
    `extractor` yields them): read from --feature_cache_dir when a matching entry exists, else
    computed from `decoded` (the run's own `data.decoded_images(files)`, so the images are
    decoded and held in memory once) and written there, atomically, when the flag is set.
    Activations too large for memory are computed straight into a file of an entry: in
    --feature_cache_dir, or else in the run folder's feature_cache/."""
    shape = None
    if len(extractor.outputs) == 2:
        shape = (views, len(files), *extractor.outputs[0].shape[1:])
    frozen_to = model_lib.layer_below(config.fine_tune_from) if shape else ""
    key = cache_key(config, files, precision, views, frozen_to)
    in_memory = shape is None or np.prod(shape) * 4 <= ACTIVATIONS_IN_MEMORY_BYTES
    root = config.feature_cache_dir or (None if in_memory else Path(config.run_dir) /
                                        "feature_cache")
    folder = Path(root) / f"{name}-{key}" if root else None
    if folder and folder.exists():
        features = _read_checked(folder, in_memory)
        if features is not None:
            logging.info("%s features: read %d from %s", name, features.views.size // 512,
                         folder)
            return features
    if not in_memory:
        _compute_on_disk(folder, extractor, decoded, config, files, name, augmenter, views,
                         shape)
        return _read(folder, in_memory)
    activations = None if shape is None else np.empty(shape, np.float32)
    features = compute_views(extractor, decoded, config.batch_size, len(files), name, augmenter,
                             views, config.seed, activations)
    logging.info("%s features: computed %d", name, features.views.shape[0] * len(files))
    if folder:
        _write_atomically(folder, features)
    return features


def _read_checked(folder: Path, in_memory: bool) -> Features | None:
    """The entry in `folder` when its files match their digests and read as features; else
    None, with one warning line naming the entry and what is wrong, and the entry removed so
    that it is computed again."""
    problem = _damage(folder)
    if problem is None:
        try:
            return _read(folder, in_memory)
        except (OSError, ValueError, KeyError, EOFError) as error:  # numpy's words for a bad file
            problem = f"it does not read as features ({type(error).__name__})"
    logging.warning("feature cache entry %s is damaged (%s): computing it again", folder,
                    problem)
    atomic.remove_dir(folder)
    return None


def _damage(folder: Path) -> str | None:
    """How the entry's files differ from the digests written with them; None when they match."""
    try:
        expected = json.loads((folder / _DIGESTS_FILE).read_text())
    except (OSError, ValueError):
        return f"{_DIGESTS_FILE} is missing or unreadable"
    if not isinstance(expected, dict) or _FILE not in expected:
        return f"{_DIGESTS_FILE} names no {_FILE}"
    for name, digest in expected.items():
        try:
            if data.sha256_of(folder / name) != digest:
                return f"{name} differs from its sha256"
        except OSError as error:
            return f"{name} cannot be read: {error.strerror}"
    return None


def _write_digests(folder: Path) -> None:
    """The sha256 of each file of an entry being written, as its last file."""
    digests = {path.name: data.sha256_of(path) for path in sorted(folder.iterdir())}
    (folder / _DIGESTS_FILE).write_text(json.dumps(digests, indent=1) + "\n")


def _allocated_memmap(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A float32 .npy file of `shape`, its every block allocated on disk before it is mapped
    (ENOSPC now, as an OSError, rather than SIGBUS when a page is first written)."""
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    del header
    with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    return np.load(path, mmap_mode="r+")


def _read(folder: Path, in_memory: bool) -> Features:
    with np.load(folder / _FILE) as stored:
        views, labels = stored["features"], stored["labels"]
    activations = None
    if (folder / _ACTIVATIONS_FILE).exists():
        activations = np.load(folder / _ACTIVATIONS_FILE, mmap_mode=None if in_memory else "r")
    return Features(views, labels, activations)


def _compute_on_disk(folder: Path, extractor: keras.Model, decoded: tf.data.Dataset,
                     config: Config, files: data.ImageFiles, name: str,
                     augmenter: keras.Model | None, views: int, shape: tuple[int, ...]) -> None:
    """An entry whose activations are written to its file as they are computed; it appears
    whole or not at all (a full disk here stops the run: the activations have nowhere else)."""
    atomic.remove_leftovers(folder.parent)
    with atomic.atomic_dir(folder) as tmp:
        activations = _allocated_memmap(tmp / _ACTIVATIONS_FILE, shape)
        features = compute_views(extractor, decoded, config.batch_size, len(files), name,
                                 augmenter, views, config.seed, activations)
        activations.flush()
        np.savez(tmp / _FILE, features=features.views, labels=features.labels)
        _write_digests(tmp)
    logging.info("%s features: computed %d, activations on disk in %s", name,
                 features.views.shape[0] * len(files), folder)


def _write_atomically(folder: Path, features: Features) -> None:
    """One cache entry, whole; a disk-full or other write error costs the cache, not the run."""
    atomic.remove_leftovers(folder.parent)
    if folder.exists():  # another run wrote the same entry first; theirs is as good as ours
        return
    try:
        with atomic.atomic_dir(folder) as tmp:
            np.savez(tmp / _FILE, features=features.views, labels=features.labels)
            if features.activations is not None:
                np.save(tmp / _ACTIVATIONS_FILE, features.activations)
            _write_digests(tmp)
    except CatdogError as error:
        logging.warning("feature cache not written (%s); training goes on without it", error)
