"""Decoded shards on disk: `python -m catdog.data prepare --data_dir=SRC --output_dir=OUT`.

Reads a dataset folder once (finding, checking and decoding every image as training does, bad
files reported here and only here), and writes each split's images (train, validation, and test
when the folder has one), decoded and resized to
--image_size, as raw uint8 TFRecord shards with a manifest: class names, image size, counts per
class, each shard's sha256 and image count, the source files and their labels, the files left
out and why. Training takes OUT as --data_dir and reads the shards with one reader per shard,
so the first epoch decodes nothing: the same pixels, in the same order, as from SRC.

Raw pixels rather than re-encoded JPEGs: 67.5 KB per 150 px image instead of ~8 KB, but no
decoding at all when read (and no second lossy encoding). The whole folder appears atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import tensorflow as tf
from absl import logging

from catdog import atomic, data
from catdog.errors import CatdogError
from catdog.faults import crash_point
from catdog.images import MAX_IMAGE_PIXELS


def prepare(data_dir: str | os.PathLike, output_dir: str | os.PathLike, image_size: int,
            validation_split: float = 0.0, seed: int = 42,
            max_pixels: int = MAX_IMAGE_PIXELS, shard_images: int = 2048) -> dict[str, Any]:
    """Writes `output_dir` (which must not exist) and returns its manifest. A lock beside it
    keeps a second prepare of the same folder out; the temporaries of killed earlier ones are
    removed first."""
    output = Path(output_dir)
    if not str(output_dir):
        raise CatdogError("prepare needs --output_dir, a new folder for the shards")
    with atomic.exclusive(output.parent / f".{output.name}.prepare.lock",
                          f"--output_dir={output}"):
        atomic.remove_leftovers_of(output)
        return _prepare(data_dir, output, image_size, validation_split, seed, max_pixels,
                        shard_images)


def _prepare(data_dir: str | os.PathLike, output: Path, image_size: int,
             validation_split: float, seed: int, max_pixels: int,
             shard_images: int) -> dict[str, Any]:
    if output.exists():
        raise CatdogError(f"--output_dir={output} already exists; prepare into a new folder")
    if data.is_prepared(data_dir):
        raise CatdogError(f"--data_dir={data_dir} is already prepared data")
    train, validation = data.find_splits(data_dir, validation_split, seed)
    found = {"train": train, "validation": validation,
             data.EVALUATION_DIR: data.find_test(data_dir, train.class_names)}
    found = {name: files for name, files in found.items() if files is not None}
    bad = list(dict.fromkeys(item for files in found.values() for item in files.skipped))
    bad += data.check_images([p for files in found.values() for p in files.paths], max_pixels)
    for item in bad:
        logging.warning("bad image %s: %s (left out)", item.path, item.reason)
    left_out = {item.path for item in bad}
    splits = {name: files.without(left_out) for name, files in found.items()}
    try:
        return _write(output, data_dir, image_size, train.class_names, bad, splits, max_pixels,
                      shard_images)
    except tf.errors.OpError as error:  # TFRecordWriter's, e.g. a full disk
        raise CatdogError(f"cannot write {output}: {error.message}") from None


def _write(output: Path, data_dir: str | os.PathLike, image_size: int,
           class_names: tuple[str, ...], bad: list[data.BadImage],
           splits: dict[str, data.ImageFiles], max_pixels: int,
           shard_images: int) -> dict[str, Any]:
    """The folder of shards and its manifest, all or nothing."""
    with atomic.atomic_dir(output) as tmp:
        written = {}
        for name, files in splits.items():
            written[name] = _write_split(tmp / name, files, image_size, max_pixels, shard_images)
            crash_point("prepare.split_written")
        manifest = {
            "format": data.PREPARED_FORMAT, "image_size": image_size,
            "class_names": list(class_names), "source": str(Path(data_dir).resolve()),
            "skipped": [{"path": item.path, "reason": item.reason} for item in bad],
            "splits": written}
        (tmp / data.PREPARED_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        crash_point("prepare.manifest_written")
    return manifest


def _write_split(folder: Path, files: data.ImageFiles, image_size: int, max_pixels: int,
                 shard_images: int) -> dict[str, Any]:
    """One split's shards, image i in shard i mod N (so reading the N shards in turn gives the
    files' order), and its manifest entry."""
    folder.mkdir()
    count = max(1, math.ceil(len(files) / shard_images))
    names = [f"shard-{i:05d}-of-{count:05d}.tfrecord" for i in range(count)]
    writers = [tf.io.TFRecordWriter(str(folder / name)) for name in names]
    try:
        for index, (image, label) in enumerate(data.decoded_images(files, image_size,
                                                                   max_pixels)):
            writers[index % count].write(_example(image.numpy().tobytes(), int(label)))
    finally:
        for writer in writers:
            writer.close()
    logging.info("%s: %d images in %d shard(s)", folder.name, len(files), count)
    return {"files": list(files.paths), "labels": list(files.labels),
            "counts": files.class_counts(),
            "shards": [{"file": name, "images": len(range(i, len(files), count)),
                        "sha256": data.sha256_of(folder / name)}
                       for i, name in enumerate(names)]}


def _example(image: bytes, label: int) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    })).SerializeToString()

