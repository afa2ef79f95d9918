"""Image folders in, tf.data datasets out: find classes and files, check images, decode, batch.

A dataset folder holds one sub-folder per class; class names are the sorted sub-folder names and
a label is the index of its name in that list. Every file in a class folder is a candidate image;
files that cannot be decoded are found before training and reported by path.

    python -m catdog.data check DIR          # list the files of DIR that training would skip
    python -m catdog.data download [--data_dir=...] [--download_url=...] [--download_sha256=...]
"""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import random
import shutil
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tensorflow as tf
from absl import logging

from catdog import atomic, images
from catdog.config import Config
from catdog.errors import CatdogError
from catdog.images import MAX_IMAGE_PIXELS, image_problem, load_image
from catdog.terminal import stderr_set_aside

SPLITS = ("train", "validation")
EVALUATION_DIR = "test"  # <data_dir>/test/: photos kept for evaluation alone
AUTOTUNE = tf.data.AUTOTUNE
PREPARED_MANIFEST = "manifest.json"  # marks a folder written by `python -m catdog.data prepare`
PREPARED_FORMAT = "catdog-prepared-v1"
CHECKED_RECORD = "checked_images.json"  # in a run folder or --feature_cache_dir


@dataclasses.dataclass(frozen=True)
class BadImage:
    """A file that cannot be used as an image, and why."""

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class ImageFiles:
    """Image paths with their integer labels, which index `class_names`."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    skipped: tuple[BadImage, ...] = ()  # entries found but never read, and why
    # Prepared data: the TFRecord shards holding these images decoded, round-robin in `paths`
    # order (the paths name the source files), and a digest of the shards' contents.
    shards: tuple[str, ...] = ()
    fingerprint: str = ""
    # A part of prepared shards: the positions, in the shards' order, of the images kept.
    positions: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> ImageFiles:
        """The files at `indices` (in that order, which must be ascending for shards): for
        prepared shards the same shards, reading only those positions."""
        indices = list(indices)
        part = dataclasses.replace(self, paths=tuple(self.paths[i] for i in indices),
                                   labels=tuple(self.labels[i] for i in indices))
        if not self.shards:
            return part
        positions = [self.positions[i] for i in indices] if self.positions else indices
        return dataclasses.replace(part, positions=tuple(positions), fingerprint=hashlib.sha256(
            f"{self.fingerprint}:{positions}".encode()).hexdigest())

    def without(self, paths: set[str]) -> ImageFiles:
        """The same files less `paths`."""
        if self.shards and paths & set(self.paths):
            raise CatdogError("images cannot be left out of prepared shards; prepare again")
        if self.shards:
            return self
        kept = [(p, label) for p, label in zip(self.paths, self.labels) if p not in paths]
        return ImageFiles(tuple(p for p, _ in kept), tuple(label for _, label in kept),
                          self.class_names, self.skipped)

    def class_counts(self) -> dict[str, int]:
        return {name: self.labels.count(i) for i, name in enumerate(self.class_names)}


@dataclasses.dataclass(frozen=True)
class Splits:
    """The checked files of a run in their three roles, and the files left out: `train`,
    `validation` (the selection photos: they choose the best epoch) and `evaluation` (photos
    that chose nothing, for the gate; None when none were kept apart)."""

    train: ImageFiles
    validation: ImageFiles
    bad_images: tuple[BadImage, ...]
    evaluation: ImageFiles | None = None
    evaluation_source: str = ""

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
    """Every visible file under `folder/<class>/`, labelled by its class's index; entries that
    must not be read are in `skipped` with the reason."""
    folder = Path(folder)
    paths, labels, skipped = [], [], []
    for label, name in enumerate(class_names):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise CatdogError(f"class folder {class_dir} is missing; every split needs the "
                              f"same class sub-folders {list(class_names)}")
        others = {(folder / other).resolve() for other in class_names if other != name}
        files, problems = _class_files(class_dir, others)
        skipped += problems
        if not files:
            raise CatdogError(f"class folder {class_dir} holds no images")
        paths += files
        labels += [label] * len(files)
    return ImageFiles(tuple(paths), tuple(labels), tuple(class_names), tuple(skipped))


def _class_files(class_dir: Path, other_classes: set[Path]) -> tuple[list[str], list[BadImage]]:
    """The regular files under a class folder, each once, in sorted order. Symlinked folders
    are followed once (a loop ends there); a link into another class's folder (it would
    mislabel), a FIFO, socket or device, a broken link or an unreadable folder is reported, never
    read. Links to files or folders elsewhere (a symlink farm) are used."""
    seen_folders: set[Path] = set()
    seen_files: dict[Path, str] = {}
    files: list[str] = []
    problems: list[BadImage] = []
    stack = [class_dir]
    while stack:
        current = stack.pop()
        real = current.resolve()
        if real in seen_folders:
            continue
        if _inside(real, other_classes):
            problems.append(BadImage(str(current), f"a link to {real}, inside another class's "
                                                   "folder; not followed"))
            continue
        seen_folders.add(real)
        try:
            entries = sorted(current.iterdir(), reverse=True)
        except OSError as error:
            problems.append(BadImage(str(current), f"cannot read folder: {error.strerror}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            problem = _entry_problem(entry, other_classes, seen_files)
            if problem == "folder":
                stack.append(entry)
            elif problem:
                problems.append(BadImage(str(entry), problem))
            else:
                seen_files[entry.resolve()] = str(entry)
                files.append(str(entry))
    return sorted(files), problems


def _inside(path: Path, folders: set[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def _entry_problem(entry: Path, other_classes: set[Path], seen: dict[Path, str]) -> str | None:
    """None for a regular file to read, "folder" for a folder to walk, else why to skip it."""
    try:
        mode = entry.stat().st_mode
    except OSError as error:
        return f"cannot be read: {error.strerror} (a broken link?)"
    if stat.S_ISDIR(mode):
        return "folder"
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device")
        return f"{kind}, not a regular file; not read"
    target = entry.resolve()
    if _inside(target, other_classes):
        return f"a link to {target}, inside another class's folder; not read"
    if target in seen:
        return f"the same file as {seen[target]}; counted once"
    return None


def split_files(files: ImageFiles, fraction: float, seed: int,
                too_few: str = "--validation_split needs at least two per class"
                ) -> tuple[ImageFiles, ImageFiles]:
    """(kept, held out): `fraction` of each class (at least one file) held out by a seeded
    draw, each part in the files' own order; `too_few` says what to do about a class of one."""
    rng = random.Random(seed)

    def shuffled(members: list[int]) -> list[int]:
        rng.shuffle(members)
        return members

    return _held_out_of_each_class(files, fraction, too_few, shuffled)


def _held_out_of_each_class(files: ImageFiles, fraction: float, too_few: str,
                            order: Callable[[list[int]], list[int]]
                            ) -> tuple[ImageFiles, ImageFiles]:
    """(kept, held out): the first `fraction` (at least one, never all) of each class's files
    in the `order` given to their indices."""
    held_out: set[int] = set()
    for label in range(len(files.class_names)):
        members = order([i for i, lab in enumerate(files.labels) if lab == label])
        count = min(max(1, round(len(members) * fraction)), len(members) - 1)
        if count < 1:
            raise CatdogError(f"class '{files.class_names[label]}' has one image; {too_few}")
        held_out.update(members[:count])
    kept = [i for i in range(len(files)) if i not in held_out]
    return files.subset(kept), files.subset(sorted(held_out))


@dataclasses.dataclass(frozen=True)
class Roles:
    """Which photos choose the model and which judge it: no photo serves two roles."""

    selection: ImageFiles  # choose the best epoch (the run's validation figures)
    evaluation: ImageFiles | None  # chose nothing: the gate's blessing, evaluate's default
    evaluation_source: str  # where the evaluation photos came from, in words

    def line(self, train: ImageFiles) -> str:
        """One line saying which photos train, select and evaluate."""
        evaluation = (f"{len(self.evaluation)} evaluate ({self.evaluation_source})"
                      if self.evaluation is not None else
                      "none are kept for evaluation alone (--evaluation_split=0 and no test/ "
                      "folder): the gate judges on the selection photos and says so")
        return (f"photos: {len(train)} train, {len(self.selection)} select the best epoch, "
                f"{evaluation}")


def _name_hash(path: str) -> str:
    """A fixed hash of a photo's class folder and file name (not of where the dataset lies)."""
    return hashlib.sha256(f"{Path(path).parent.name}/{Path(path).name}".encode()).hexdigest()


def hash_split(files: ImageFiles, fraction: float, too_few: str
               ) -> tuple[ImageFiles, ImageFiles]:
    """(kept, held out): `fraction` of each class (at least one, never all) held out, chosen by
    a fixed hash of each photo's class and name: the same photos in every run, whatever its
    seed, and a photo added later leaves the others where they were."""
    return _held_out_of_each_class(
        files, fraction, too_few, lambda members: sorted(
            members, key=lambda i: _name_hash(files.paths[i])))


def _too_few(evaluation_split: float) -> str:
    return (f"--evaluation_split={evaluation_split:g} keeps part of each class's validation "
            f"photos for evaluation alone and needs two or more; add photos or a "
            f"{EVALUATION_DIR}/ folder, or pass --evaluation_split=0 (the gate then judges on "
            "the photos that chose the model)")


def assign_roles(validation: ImageFiles, test: ImageFiles | None,
                 evaluation_split: float) -> Roles:
    """The evaluation photos: a test/ folder when there is one, else `evaluation_split` of each
    class of the validation photos, chosen by a fixed hash of their names (`hash_split`: every
    run, whatever its seed, keeps the same photos apart, so a candidate and the baseline it is
    compared with are judged on photos neither chose), the rest selecting; else none."""
    if test is not None:
        return Roles(validation, test, f"the {EVALUATION_DIR}/ folder")
    if not evaluation_split:
        return Roles(validation, None, "")
    selection, evaluation = hash_split(validation, evaluation_split, _too_few(evaluation_split))
    return Roles(selection, evaluation, f"{evaluation_split:g} of the validation photos of "
                 "each class, the same in every run (--evaluation_split)")


def find_test(data_dir: str | os.PathLike, class_names: Sequence[str]) -> ImageFiles | None:
    """The photos of `<data_dir>/test/`, kept for evaluation alone, or None when there is none."""
    folder = Path(data_dir) / EVALUATION_DIR
    if not (folder.is_dir() and (Path(data_dir) / "train").is_dir()):
        return None
    found = class_names_in(folder)
    if list(found) != list(class_names):
        raise CatdogError(f"{folder} has classes {list(found)} but the training photos have "
                          f"{list(class_names)}; both must have the same class sub-folders")
    return list_images(folder, class_names)


def _existing(data_dir: str | os.PathLike) -> Path:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CatdogError(f"--data_dir={data_dir} does not exist or is not a folder "
                          "(pass --download to fetch the quick-start dataset)")
    return data_dir


def find_splits(data_dir: str | os.PathLike, validation_split: float,
                seed: int) -> tuple[ImageFiles, ImageFiles]:
    """Training and validation files of `data_dir`, from train/ and validation/ or by a split."""
    data_dir = _existing(data_dir)
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


def check_images(paths: Sequence[str], max_pixels: int = MAX_IMAGE_PIXELS,
                 record: Path | None = None) -> list[BadImage]:
    """Decodes every file once, in parallel, and returns those that fail, in `paths` order.
    With `record` (a JSON file), a file checked before with the same size, mtime and pixel limit
    is not decoded again; the record is updated with what was decoded."""
    with stderr_set_aside() as native_lines:  # see below
        problems = checked_once(
            paths, lambda path: image_problem(path, max_pixels, native_reasons=False),
            max_pixels, record, "images")
    for line in native_lines:
        if not images.is_libjpeg_line(line):
            print(line, file=sys.stderr)  # anything else written there is shown as it was
    # libjpeg's reasons for broken JPEGs, written to stderr by threads decoding in parallel,
    # name no file: the few JPEGs that failed are decoded again, one at a time, to read theirs.
    return [BadImage(p, image_problem(p, max_pixels) if problems[p].startswith("jpeg::")
                     else problems[p]) for p in paths if problems[p]]


def checked_once(paths: Sequence[str], check: Callable[[str], str | None], depends_on: Any,
                 record: Path | None, what: str) -> dict[str, str | None]:
    """`check(path)` (a problem, or None) for every path, run in parallel, except for files
    that `record` says were checked with the same size, mtime and `depends_on`; the record
    (JSON, shared by every kind of check) is updated with the new results."""
    known = _read_record(record)
    stamps = {path: _stamp(path, depends_on) for path in paths}
    todo = [p for p in paths if stamps[p] is None or _recorded(known, p).get("stamp")
            != stamps[p] or "problem" not in _recorded(known, p)]
    workers = os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        found = dict(zip(todo, pool.map(check, todo)))
    problems = {p: found[p] if p in found else known[_key(p)]["problem"] for p in paths}
    if record and todo:
        known.update({_key(p): {"stamp": stamps[p], "problem": problems[p]} for p in todo
                      if stamps[p] is not None})
        try:
            atomic.write_text(record, json.dumps(known))
        except CatdogError as error:  # the record saves time; losing it costs nothing else
            logging.warning("record of checked files not written (%s)", error)
    if record and len(todo) < len(paths):
        logging.info("%s: %d checked before and unchanged (%s), %d checked now", what,
                     len(paths) - len(todo), record, len(todo))
    return problems


def _key(path: str) -> str:
    return os.path.abspath(path)


def _recorded(known: dict[str, Any], path: str) -> dict[str, Any]:
    entry = known.get(_key(path))
    return entry if isinstance(entry, dict) else {}


def _stamp(path: str, depends_on: Any) -> list | None:
    """What a file's check depends on: its size and mtime, and what the check compares with."""
    try:
        info = os.stat(path)
    except OSError:
        return None  # checked again, and reported by that check
    return [info.st_size, info.st_mtime_ns, depends_on]


def _read_record(record: Path | None) -> dict[str, dict]:
    try:
        known = json.loads(record.read_text()) if record else {}
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def is_prepared(folder: str | os.PathLike) -> bool:
    return (Path(folder) / PREPARED_MANIFEST).is_file()


def prepared_splits(folder: str | os.PathLike, image_size: int,
                    record: Path | None = None) -> tuple[ImageFiles, ImageFiles]:
    """The training and validation images of a folder written by `catdog.prepare`, once every
    shard matches the sha256 its manifest gives (`verify_shards`)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest["image_size"] != image_size:
        raise CatdogError(f"--data_dir={folder} was prepared at {manifest['image_size']} px; "
                          f"train with --image_size={manifest['image_size']}, or prepare it "
                          f"again with --image_size={image_size}")
    verify_shards(folder, manifest, record)

    return prepared_split(folder, manifest, "train"), prepared_split(folder, manifest,
                                                                      "validation")


def prepared_split(folder: Path, manifest: dict[str, Any], name: str) -> ImageFiles | None:
    """One split of a prepared folder (None when the manifest has no such split)."""
    entry = manifest["splits"].get(name)
    if entry is None:
        return None
    return ImageFiles(tuple(entry["files"]), tuple(entry["labels"]),
                      tuple(manifest["class_names"]),
                      shards=tuple(str(folder / name / s["file"]) for s in entry["shards"]),
                      fingerprint=hashlib.sha256(json.dumps(entry["shards"]).encode())
                      .hexdigest())


def read_manifest(folder: Path) -> dict[str, Any]:
    """A prepared folder's manifest.json, or one line saying it is not one."""
    try:
        manifest = json.loads((folder / PREPARED_MANIFEST).read_text())
        format_ = manifest["format"]
    except (OSError, ValueError, KeyError, TypeError):
        format_ = None
    if format_ != PREPARED_FORMAT:
        raise CatdogError(f"{folder / PREPARED_MANIFEST} is not a {PREPARED_FORMAT} manifest; "
                          "prepare the data again")
    return manifest


def verify_shards(folder: Path, manifest: dict[str, Any], record: Path | None = None) -> int:
    """Checks every shard of a prepared folder against the sha256 in its manifest (a rewritten
    shard can hold valid records with other labels); one read per shard, remembered in `record`
    by size and mtime. Raises one line naming the first shard that is missing or differs;
    returns how many were verified."""
    expected = {str(folder / name / shard["file"]): shard["sha256"]
                for name, entry in manifest["splits"].items() for shard in entry["shards"]}

    def mismatch(path: str) -> str | None:
        try:
            return None if sha256_of(Path(path)) == expected[path] else "differs"
        except OSError:
            return "is missing or unreadable"

    manifest_digest = sha256_of(folder / PREPARED_MANIFEST)  # a new manifest: all again
    bad = [(path, problem) for path, problem in checked_once(
        list(expected), mismatch, manifest_digest, record, "shards").items() if problem]
    if bad:
        path, problem = bad[0]
        against = (f" from the sha256 in {folder / PREPARED_MANIFEST}"
                   if problem == "differs" else "")
        raise CatdogError(f"shard {path} {problem}{against}; prepare {folder} again")
    return len(expected)


def find_roles(data_dir: str | os.PathLike, validation_split: float, evaluation_split: float,
               seed: int, image_size: int, record: Path | None = None
               ) -> tuple[ImageFiles, Roles]:
    """The training files of a dataset folder (class folders or prepared shards) and the roles
    of the others (`assign_roles`), before any image is checked: the same draw whoever asks
    (training, or `catdog.publish` finding a candidate's photos from its record). With
    --validation_split the evaluation photos are held out of the class folders first, by their
    names, so that no seed ever trains or selects on them."""
    folder = Path(data_dir)
    if is_prepared(folder):
        train, validation = prepared_splits(folder, image_size, record)
        test = prepared_split(folder, read_manifest(folder), EVALUATION_DIR)
        return train, assign_roles(validation, test, evaluation_split)
    if validation_split == 0 or evaluation_split == 0:
        train, validation = find_splits(folder, validation_split, seed)
        return train, assign_roles(validation, find_test(folder, train.class_names),
                                   evaluation_split)
    source = folder / "train" if (_existing(folder) / "train").is_dir() else folder
    pool = list_images(source, class_names_in(source))
    test = find_test(folder, pool.class_names)
    if test is not None:
        train, validation = split_files(pool, validation_split, seed)
        return train, Roles(validation, test, f"the {EVALUATION_DIR}/ folder")
    held = validation_split * evaluation_split
    rest, evaluation = hash_split(pool, held, _too_few(evaluation_split))
    train, selection = split_files(rest, (validation_split - held) / (1 - held), seed)
    return train, Roles(selection, evaluation, f"{held:g} of each class's photos, the same in "
                        "every run (--validation_split × --evaluation_split)")


def prepare_splits(config: Config, checked_record: Path | None = None) -> Splits:
    """Finds, downloads if asked, and checks a run's images, applying --on_bad_image, each photo
    in one role (`find_roles`); files that `checked_record` says were checked unchanged are not
    decoded again. A prepared folder (`python -m catdog.data prepare`) was checked when it was
    written."""
    if config.download and not Path(config.data_dir).exists():
        download_dataset(config.download_url, config.data_dir, config.download_sha256)
    if is_prepared(config.data_dir) and config.validation_split:
        raise CatdogError(f"--data_dir={config.data_dir} is prepared data with its own "
                          "validation split; leave --validation_split at 0")
    train, roles = find_roles(config.data_dir, config.validation_split,
                              config.evaluation_split, config.seed, config.image_size,
                              checked_record)
    parts = [train, roles.selection] + ([roles.evaluation] if roles.evaluation else [])
    bad = [] if train.shards else list(dict.fromkeys(
        item for files in parts for item in files.skipped)) + check_images(
        [path for files in parts for path in files.paths], config.max_image_pixels,
        checked_record)
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
    evaluation = roles.evaluation.without(bad_paths) if roles.evaluation else None
    return _counted(Splits(train.without(bad_paths), roles.selection.without(bad_paths),
                           tuple(bad), evaluation, roles.evaluation_source), config.data_dir)


def _counted(splits: Splits, data_dir: str) -> Splits:
    """`splits`, once every class has images in each role; their counts logged, and in one
    line which photos select and which evaluate."""
    roles = {"train": splits.train, "selection": splits.validation,
             "evaluation": splits.evaluation}
    for name, files in roles.items():
        for class_name, count in (files.class_counts() if files else {}).items():
            if count == 0:
                raise CatdogError(f"class '{class_name}' has no decodable images among the "
                                  f"{name} photos of {data_dir}")
        if files is not None:
            logging.info("%s: %d images %s", name, len(files), files.class_counts())
    logging.info("%s", Roles(splits.validation, splits.evaluation,
                             splits.evaluation_source).line(splits.train))
    return splits


# ---------------------------------------------------------------------------------------------
# tf.data pipelines


def decoded_images(files: ImageFiles, image_size: int,
                   max_pixels: int = MAX_IMAGE_PIXELS) -> tf.data.Dataset:
    """(uint8 image [S, S, 3], int32 label) pairs, decoded in parallel and cached in memory.

    Build it once per split and derive each epoch's batches from it, so files are decoded in the
    first epoch only. Prepared images are read from their shards instead, one reader per shard.
    """
    if files.shards:  # its length stated, as batches() sizes the shuffle buffer from it
        records = read_shards(files.shards, image_size)
        if files.positions:  # a part of the shards: only the images at these positions
            keep = tf.constant(files.positions, tf.int64)
            records = records.enumerate().filter(
                lambda i, _: tf.reduce_any(tf.equal(keep, i))).map(lambda _, record: record)
        return records.apply(tf.data.experimental.assert_cardinality(len(files))).cache()
    dataset = tf.data.Dataset.from_tensor_slices(
        (list(files.paths), tf.constant(files.labels, tf.int32)))
    dataset = dataset.map(lambda path, label: (load_image(path, image_size, max_pixels), label),
                          num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.cache()


SHARD_FEATURES = {"image": tf.io.FixedLenFeature([], tf.string),
                  "label": tf.io.FixedLenFeature([], tf.int64)}


def _parse_shard_record(image_size: int):
    def parse(record):
        example = tf.io.parse_single_example(record, SHARD_FEATURES)
        image = tf.reshape(tf.io.decode_raw(example["image"], tf.uint8),
                           [image_size, image_size, 3])
        return image, tf.cast(example["label"], tf.int32)

    return parse


def read_shards(shards: Sequence[str], image_size: int) -> tf.data.Dataset:
    """The (image, label) records of prepared shards in their listed order: the images were
    written round-robin, so one reader per shard, taken in turn, restores it."""
    records = tf.data.Dataset.from_tensor_slices(list(shards)).interleave(
        tf.data.TFRecordDataset, cycle_length=len(shards), block_length=1,
        num_parallel_calls=AUTOTUNE, deterministic=True)
    return records.map(_parse_shard_record(image_size), num_parallel_calls=AUTOTUNE,
                       deterministic=True)


SERVICE_SHUFFLE_IMAGES = 4096  # decoded images a worker shuffles among, read from shards


def service_batches(files: ImageFiles, image_size: int, batch_size: int, shuffle_seed: int,
                    service: str, max_pixels: int = MAX_IMAGE_PIXELS) -> tf.data.Dataset:
    """Shuffled float32 training batches of `files`, read, decoded and batched by the workers of
    the tf.data service whose dispatcher is `service` (grpc://host:port). The dispatcher hands
    the file list (or the prepared shards) out in splits (ShardingPolicy.DYNAMIC, TensorFlow's
    "distributed_epoch"), so each image is read once per epoch whichever worker reads it; each
    epoch is a new job. The workers must see the files at the same paths. Nothing is cached: the
    workers decode every epoch, in parallel, on CPUs this process does not have."""
    if files.shards:  # shards in a seeded order, then images shuffled within a bounded buffer
        shards = tf.data.Dataset.from_tensor_slices(list(files.shards)).shuffle(
            len(files.shards), seed=shuffle_seed, reshuffle_each_iteration=False)
        dataset = shards.interleave(tf.data.TFRecordDataset, num_parallel_calls=AUTOTUNE).map(
            _parse_shard_record(image_size), num_parallel_calls=AUTOTUNE).shuffle(
            SERVICE_SHUFFLE_IMAGES, seed=shuffle_seed, reshuffle_each_iteration=False)
    else:  # paths shuffled (cheap), then decoded
        dataset = tf.data.Dataset.from_tensor_slices(
            (list(files.paths), tf.constant(files.labels, tf.int32))).shuffle(
            max(len(files), 1), seed=shuffle_seed, reshuffle_each_iteration=False).map(
            lambda path, label: (load_image(path, image_size, max_pixels), label),
            num_parallel_calls=AUTOTUNE)
    dataset = dataset.map(lambda image, label: (tf.cast(image, tf.float32), label))
    dataset = dataset.batch(batch_size).apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC, service=service))
    return dataset.prefetch(AUTOTUNE)


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
    with atomic.atomic_dir(data_dir) as tmp:
        scratch = tmp / ".download"  # must exist, or Keras downloads to /tmp/.keras instead
        scratch.mkdir()
        logging.info("downloading %s", url)
        try:
            extracted = keras.utils.get_file(
                "dataset.zip", origin=url, cache_dir=scratch, cache_subdir="", extract=True,
                file_hash=sha256 or None)
        except ValueError as error:
            raise CatdogError(f"{url} does not match --download_sha256={sha256}: {error}"
                              ) from None
        except Exception as error:
            raise CatdogError(
                f"--data_dir={data_dir} does not exist, and --download could not fetch it: could "
                f"not download {url} ({error}); check the folder's name, or, without internet, "
                "pass a dataset folder you have and a local weights file: "
                "--data_dir=/path/to/cats_and_dogs_filtered --weights=/path/to/vgg16_notop.h5 "
                "(README.md, 'Without internet')") from None
        digest = sha256_of(scratch / "dataset.zip")
        if not sha256:
            logging.warning("downloaded %s unchecked; its sha256 is %s (pin it with "
                            "--download_sha256)", url, digest)
        for entry in _visible_entries(_dataset_root(Path(extracted), url)):
            entry.rename(tmp / entry.name)
        shutil.rmtree(scratch)
    logging.info("dataset ready in %s", data_dir)
    return data_dir


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MB chunks."""
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


def check_folder(folder: str, max_pixels: int = MAX_IMAGE_PIXELS) -> list[BadImage]:
    """Checks every image of a dataset folder (with or without train/ and validation/)."""
    root = Path(folder)
    tops = [root / s for s in SPLITS if (root / s).is_dir()] or [root]
    paths: list[str] = []
    skipped: list[BadImage] = []
    for top in tops:
        files = list_images(top, class_names_in(top))
        paths += files.paths
        skipped += files.skipped
    logging.info("checking %d files under %s", len(paths), folder)
    return skipped + check_images(paths, max_pixels)
