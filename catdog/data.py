"""Image folders in, tf.data datasets out: find classes and files, check images, decode, batch.

A dataset folder holds one sub-folder per class; class names are the sorted sub-folder names and
a label is the index of its name in that list. Every file in a class folder is a candidate image;
files that cannot be decoded are found before training and reported by path.

    python -m catdog.data check DIR          # list the files of DIR that training would skip
    python -m catdog.data download [--data_dir=...] [--download_url=...] [--download_sha256=...]
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import random
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf
from absl import logging

from catdog import flags as catdog_flags
from catdog.config import Config
from catdog.errors import CatdogError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
SPLITS = ("train", "validation")
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class ImageFiles:
    """Image paths with their integer labels, which index `class_names`."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def without(self, paths: set[str]) -> ImageFiles:
        """The same files less `paths`."""
        kept = [(p, label) for p, label in zip(self.paths, self.labels) if p not in paths]
        return ImageFiles(tuple(p for p, _ in kept), tuple(label for _, label in kept),
                          self.class_names)

    def class_counts(self) -> dict[str, int]:
        return {name: self.labels.count(i) for i, name in enumerate(self.class_names)}


@dataclasses.dataclass(frozen=True)
class BadImage:
    """A file that cannot be used as an image, and why."""

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Splits:
    """The checked training and validation files of a run, and the files left out."""

    train: ImageFiles
    validation: ImageFiles
    bad_images: tuple[BadImage, ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names


# ---------------------------------------------------------------------------------------------
# Finding files


def _visible_entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def class_names_in(folder: str | os.PathLike) -> tuple[str, ...]:
    """The sorted names of the class sub-folders of `folder`; at least two are required."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CatdogError(f"data folder {folder} does not exist or is not a folder")
    names = tuple(p.name for p in _visible_entries(folder) if p.is_dir())
    if len(names) < 2:
        raise CatdogError(
            f"data folder {folder} has {len(names)} class sub-folder(s) {list(names)}; "
            "it needs one sub-folder per class and at least two classes")
    return names


def list_images(folder: str | os.PathLike, class_names: Sequence[str]) -> ImageFiles:
    """Every visible file under `folder/<class>/`, labelled by its class's index."""
    folder = Path(folder)
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise CatdogError(f"class folder {class_dir} is missing; every split needs the "
                              f"same class sub-folders {list(class_names)}")
        files = sorted(
            str(Path(root) / f)
            for root, dirs, names in os.walk(class_dir, followlinks=True)
            for f in names
            if not f.startswith(".") and not _hidden_dir_in(Path(root), class_dir))
        if not files:
            raise CatdogError(f"class folder {class_dir} holds no images")
        paths += files
        labels += [label] * len(files)
    return ImageFiles(tuple(paths), tuple(labels), tuple(class_names))


def _hidden_dir_in(root: Path, top: Path) -> bool:
    return any(part.startswith(".") for part in root.relative_to(top).parts)


def split_files(files: ImageFiles, fraction: float, seed: int) -> tuple[ImageFiles, ImageFiles]:
    """Holds out `fraction` of each class (at least one file) for validation, by a seeded draw."""
    rng = random.Random(seed)
    held_out: set[str] = set()
    for label in range(len(files.class_names)):
        class_paths = [p for p, lab in zip(files.paths, files.labels) if lab == label]
        rng.shuffle(class_paths)
        count = min(max(1, round(len(class_paths) * fraction)), len(class_paths) - 1)
        if count < 1:
            raise CatdogError(f"class '{files.class_names[label]}' has one image; "
                              "--validation_split needs at least two per class")
        held_out.update(class_paths[:count])
    validation_paths = set(files.paths) - held_out
    return files.without(held_out), files.without(validation_paths)


def find_splits(data_dir: str | os.PathLike, validation_split: float,
                seed: int) -> tuple[ImageFiles, ImageFiles]:
    """Training and validation files of `data_dir`, from train/ and validation/ or by a split."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CatdogError(f"--data_dir={data_dir} does not exist or is not a folder "
                          "(pass --download to fetch the quick-start dataset)")
    train_dir, validation_dir = data_dir / "train", data_dir / "validation"
    if train_dir.is_dir() and validation_dir.is_dir() and validation_split == 0:
        class_names = class_names_in(train_dir)
        validation_classes = class_names_in(validation_dir)
        if validation_classes != class_names:
            raise CatdogError(
                f"{validation_dir} has classes {list(validation_classes)} but {train_dir} has "
                f"{list(class_names)}; both must have the same class sub-folders")
        return list_images(train_dir, class_names), list_images(validation_dir, class_names)
    if validation_split == 0:
        raise CatdogError(
            f"--data_dir={data_dir} has no train/ and validation/ sub-folders; add them, or "
            "pass --validation_split (e.g. 0.2) to hold out part of each class folder")
    source = train_dir if train_dir.is_dir() else data_dir
    files = list_images(source, class_names_in(source))
    return split_files(files, validation_split, seed)


# ---------------------------------------------------------------------------------------------
# Decoding and checking images


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF bytes → uint8 RGB [H, W, 3] (grayscale expanded, alpha dropped)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Squashes an image to `image_size`², antialiased, keeping uint8 RGB in 0–255."""
    resized = tf.image.resize(image, [image_size, image_size], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Reads, decodes and resizes one image file; graph-compatible for tf.data."""
    return resize_image(decode_image(tf.io.read_file(path)), image_size)


def _short_tf_error(error: tf.errors.OpError) -> str:
    """'Input is empty.' instead of TensorFlow's '{{function_node …}} Input is empty. [Op:…]'."""
    message = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message)
    message = re.sub(r"\s*\[Op:\w+\]", "", message)
    return re.sub(r"\s*name:\s*\S*$", "", message.strip())


def read_checked_image(path: str, image_size: int | None = None
                       ) -> tuple[tf.Tensor | None, str | None]:
    """Eagerly reads and decodes one file (and resizes it when `image_size` is given):
    (image, None), or (None, why it cannot be used as an image)."""
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        return None, (f"unsupported extension '{Path(path).suffix}' "
                      f"(expected one of {', '.join(IMAGE_EXTENSIONS)})")
    try:
        image = decode_image(tf.io.read_file(path))
    except tf.errors.OpError as error:
        return None, _short_tf_error(error)
    return (image if image_size is None else resize_image(image, image_size)), None


def image_problem(path: str) -> str | None:
    """Why `path` cannot be used as a training image, or None if it decodes."""
    return read_checked_image(path)[1]


def check_images(paths: Sequence[str]) -> list[BadImage]:
    """Decodes every file once, in parallel, and returns those that fail, in `paths` order."""
    workers = os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        problems = pool.map(image_problem, paths)
        return [BadImage(p, problem) for p, problem in zip(paths, problems) if problem]


def prepare_splits(config: Config) -> Splits:
    """Finds, downloads if asked, and checks a run's images, applying --on_bad_image."""
    if config.download and not Path(config.data_dir).exists():
        download_dataset(config.download_url, config.data_dir, config.download_sha256)
    train, validation = find_splits(config.data_dir, config.validation_split, config.seed)
    bad = check_images(train.paths + validation.paths)
    if bad:
        for item in bad:
            logging.warning("bad image %s: %s", item.path, item.reason)
        if config.on_bad_image == "fail":
            raise CatdogError(
                f"{len(bad)} file(s) under {config.data_dir} cannot be decoded, first "
                f"{bad[0].path} ({bad[0].reason}); fix or remove them, or pass "
                "--on_bad_image=skip")
        logging.warning("skipping %d bad image(s) (--on_bad_image=skip)", len(bad))
    bad_paths = {item.path for item in bad}
    splits = Splits(train.without(bad_paths), validation.without(bad_paths), tuple(bad))
    for name, files in zip(SPLITS, (splits.train, splits.validation)):
        for class_name, count in files.class_counts().items():
            if count == 0:
                raise CatdogError(f"class '{class_name}' has no decodable images in the "
                                  f"{name} split of {config.data_dir}")
        logging.info("%s: %d images %s", name, len(files), files.class_counts())
    return splits


# ---------------------------------------------------------------------------------------------
# tf.data pipelines


def decoded_images(files: ImageFiles, image_size: int) -> tf.data.Dataset:
    """(uint8 image [S, S, 3], int32 label) pairs, decoded in parallel and cached in memory.

    Build it once per split and derive each epoch's batches from it, so files are decoded in the
    first epoch only.
    """
    dataset = tf.data.Dataset.from_tensor_slices(
        (list(files.paths), tf.constant(files.labels, tf.int32)))
    dataset = dataset.map(lambda path, label: (load_image(path, image_size), label),
                          num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.cache()


def batches(decoded: tf.data.Dataset, batch_size: int,
            shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Float32 pixel batches (0–255) with labels; shuffled by `shuffle_seed` unless it is None."""
    dataset = decoded
    if shuffle_seed is not None:
        size = int(decoded.cardinality())
        dataset = dataset.shuffle(max(size, 1), seed=shuffle_seed, reshuffle_each_iteration=False)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(lambda images, labels: (tf.cast(images, tf.float32), labels),
                          num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)


# ---------------------------------------------------------------------------------------------
# Download


def download_dataset(url: str, data_dir: str | os.PathLike, sha256: str = "") -> Path:
    """Downloads and unpacks a zip of a dataset folder into `data_dir`, which must not exist.

    The archive may hold the dataset at its top or inside one folder (as Google's
    cats_and_dogs_filtered.zip does). Nothing appears at `data_dir` unless the download, the
    sha256 check and the extraction all succeed.
    """
    import keras  # Keras is heavy to import and only needed here and in the model.

    data_dir = Path(data_dir)
    if data_dir.exists():
        raise CatdogError(f"--data_dir={data_dir} already exists; not downloading over it")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir.parent, prefix=f".{data_dir.name}.") as tmp:
        logging.info("downloading %s", url)
        try:
            extracted = keras.utils.get_file(
                "dataset.zip", origin=url, cache_dir=tmp, cache_subdir="", extract=True,
                file_hash=sha256 or None)
        except ValueError as error:
            raise CatdogError(f"{url} does not match --download_sha256={sha256}: {error}")
        except Exception as error:
            raise CatdogError(f"could not download {url}: {error}") from error
        digest = _sha256_of(Path(tmp) / "dataset.zip")
        if not sha256:
            logging.warning("downloaded %s unchecked; its sha256 is %s (pin it with "
                            "--download_sha256)", url, digest)
        root = _dataset_root(Path(extracted), url)
        os.replace(root, data_dir)
    logging.info("dataset ready in %s", data_dir)
    return data_dir


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dataset_root(extracted: Path, url: str) -> Path:
    """The folder inside an unpacked archive that holds the class or split folders."""
    if not extracted.is_dir():
        raise CatdogError(f"{url} is not a zip archive that could be unpacked")
    entries = _visible_entries(extracted)
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return extracted


# ---------------------------------------------------------------------------------------------
# Command line


def check_folder(folder: str) -> list[BadImage]:
    """Checks every image of a dataset folder (with or without train/ and validation/)."""
    root = Path(folder)
    tops = [root / s for s in SPLITS if (root / s).is_dir()] or [root]
    paths: list[str] = []
    for top in tops:
        paths += list_images(top, class_names_in(top)).paths
    logging.info("checking %d files under %s", len(paths), folder)
    return check_images(paths)


def main(argv: Sequence[str]) -> int:
    command = argv[1:2]
    if command == ["check"] and len(argv) == 3:
        bad = check_folder(argv[2])
        for item in bad:
            print(f"{item.path}: {item.reason}")
        print(f"{len(bad)} bad file(s)", file=sys.stderr)
        return 1 if bad else 0
    if command == ["download"] and len(argv) == 2:
        config = catdog_flags.config_from_flags()
        download_dataset(config.download_url, config.data_dir, config.download_sha256)
        return 0
    raise CatdogError("usage: python -m catdog.data check DIR | download [--data_dir=DIR]")


if __name__ == "__main__":
    from catdog import cli

    cli.run(main, catdog_flags.define_train_flags)
