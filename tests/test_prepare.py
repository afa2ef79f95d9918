"""catdog.prepare (`python -m catdog.data prepare`): decoded shards with a manifest, read back as
the same pixels in the same order, and training on them equal to training on the JPEG folder."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from catdog import data, data_cli, faults, prepare, train
from catdog.config import Config
from catdog.errors import CatdogError
from catdog.images import MAX_IMAGE_PIXELS

from conftest import lock_held_by_another_process, run_catdog, write_split


@pytest.fixture
def source(dataset_dir):
    """The JPEG dataset with one file that is not an image."""
    (dataset_dir / "train" / "cats" / "broken.jpg").write_bytes(b"not a jpeg")
    return dataset_dir


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(source, prepared folder, manifest): `source`'s photos prepared once at 32 px, 5 a shard,
    for the tests that only read them (a test that changes them works on a copy)."""
    root = tmp_path_factory.mktemp("prepare")
    source = write_split(root / "dataset" / "train", 16, seed=1).parent
    write_split(source / "validation", 6, seed=2)
    (source / "train" / "cats" / "broken.jpg").write_bytes(b"not a jpeg")
    manifest = prepare.prepare(source, root / "prepared", 32, shard_images=5)
    return source, root / "prepared", manifest


def as_arrays(dataset):
    pairs = [(image.numpy(), int(label)) for image, label in dataset]
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def test_the_manifest_counts_lists_and_fingerprints_what_was_written(prepared):
    _, folder, manifest = prepared
    assert [item["path"].endswith("broken.jpg") for item in manifest["skipped"]] == [True]
    assert manifest["class_names"] == ["cats", "dogs"] and manifest["image_size"] == 32
    train = manifest["splits"]["train"]
    assert train["counts"] == {"cats": 16, "dogs": 16}
    assert len(train["files"]) == len(train["labels"]) == 32
    assert not any(path.endswith("broken.jpg") for path in train["files"])
    assert [s["images"] for s in train["shards"]] == [5, 5, 5, 5, 4, 4, 4]
    for shard in train["shards"]:
        written = (folder / "train" / shard["file"]).read_bytes()
        assert hashlib.sha256(written).hexdigest() == shard["sha256"]
    assert json.loads((folder / "manifest.json").read_text()) == manifest


def test_shards_give_back_the_same_pixels_in_the_same_order(prepared):
    source, folder, _ = prepared
    from_jpegs, _ = data.find_splits(source, 0.0, seed=0)
    from_jpegs = from_jpegs.without({p for p in from_jpegs.paths if p.endswith("broken.jpg")})
    from_shards, _ = data.prepared_splits(folder, 32)
    assert from_shards.paths == from_jpegs.paths and len(from_shards.shards) == 7
    decoded = data.decoded_images(from_shards, 32)
    assert int(decoded.cardinality()) == 32  # what sizes each epoch's shuffle
    images, labels = as_arrays(decoded)
    expected_images, expected_labels = as_arrays(data.decoded_images(from_jpegs, 32))
    np.testing.assert_array_equal(images, expected_images)
    assert labels == expected_labels == list(from_jpegs.labels)


def test_prepared_photos_keep_their_roles_and_the_same_pixels_as_the_folder(source, tmp_path):
    write_split(source / "test", 2, seed=9)
    prepare.prepare(source, tmp_path / "prepared", 32, shard_images=3)
    from_shards = data.prepare_splits(Config(data_dir=str(tmp_path / "prepared"),
                                             image_size=32))
    from_jpegs = data.prepare_splits(Config(data_dir=str(source), image_size=32))
    for role in ("validation", "evaluation"):
        shards, jpegs = getattr(from_shards, role), getattr(from_jpegs, role)
        assert shards.paths == jpegs.paths, role
        np.testing.assert_array_equal(as_arrays(data.decoded_images(shards, 32))[0],
                                      as_arrays(data.decoded_images(jpegs, 32))[0])
    assert from_shards.evaluation_source == "the test/ folder"


def test_a_part_of_prepared_shards_reads_only_its_photos(prepared):
    _, validation = data.prepared_splits(prepared[1], 32)
    selection, evaluation = data.split_files(validation, 0.5, seed=1)
    whole, labels = as_arrays(data.decoded_images(validation, 32))
    for part in (selection, evaluation):
        indices = [validation.paths.index(p) for p in part.paths]
        images, part_labels = as_arrays(data.decoded_images(part, 32))
        np.testing.assert_array_equal(images, whole[indices])
        assert part_labels == [labels[i] for i in indices] == list(part.labels)
    assert selection.fingerprint != evaluation.fingerprint != validation.fingerprint


def test_a_prepared_folder_at_another_size_is_one_line_naming_the_fix(prepared):
    with pytest.raises(CatdogError, match=r"prepared at 32 px; train with --image_size=32, or "
                                          r"prepare it again with --image_size=48"):
        data.prepare_splits(Config(data_dir=str(prepared[1]), image_size=48))


def test_a_rewritten_shard_is_refused_in_one_line_before_training(prepared, tmp_path,
                                                                  monkeypatch):
    _, original, manifest = prepared
    prepared = shutil.copytree(original, tmp_path / "prepared")
    record = tmp_path / "record.json"
    data.prepared_splits(prepared, 32, record)
    reads = []
    real = data.sha256_of
    monkeypatch.setattr(data, "sha256_of", lambda path: reads.append(path) or real(path))
    data.prepared_splits(prepared, 32, record)
    assert reads == [prepared / "manifest.json"]  # the shards were verified once, before
    # Valid records with inverted labels: CRCs pass, only the manifest's sha256 tells.
    first = manifest["splits"]["train"]["shards"][0]["file"]
    shard = prepared / "train" / first
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(
        str(shard))]
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for example in examples:
            label = example.features.feature["label"].int64_list.value
            label[0] = 1 - label[0]
            writer.write(example.SerializeToString())
    with pytest.raises(CatdogError, match=f"^shard {shard} differs from the sha256 in "
                                          f"{prepared / 'manifest.json'}; prepare {prepared} "
                                          "again$"):
        data.prepare_splits(Config(data_dir=str(prepared), image_size=32), record)
    shard.unlink()
    with pytest.raises(CatdogError, match=f"^shard {shard} is missing or unreadable"):
        data.prepared_splits(prepared, 32)
    with pytest.raises(CatdogError, match=f"^shard {shard} is missing or unreadable"):
        data_cli.check(str(prepared), MAX_IMAGE_PIXELS)  # `python -m catdog.data check`


def test_data_check_recognises_a_prepared_folder(prepared, capsys):
    """`python -m catdog.data check` (its wiring: tests/test_data.py) on a prepared folder."""
    source, folder, manifest = prepared
    shards = sum(len(manifest["splits"][s]["shards"]) for s in ("train", "validation"))
    assert data_cli.check(str(folder), MAX_IMAGE_PIXELS) == 0
    assert capsys.readouterr().out == (f"{folder} is prepared data: its {shards} "
                                       "shards match the sha256s in manifest.json\n")
    assert data_cli.check(str(source), MAX_IMAGE_PIXELS) == 1
    assert capsys.readouterr().out.startswith(str(source / "train" / "cats" / "broken.jpg") +
                                              ": ")


def test_a_prepare_clears_what_killed_prepares_of_its_folder_left(source, tmp_path):
    killed = [tmp_path / f".prepared.tmp-{i}" for i in range(5)]  # as SIGKILLs leave them
    for folder in killed:
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "shard-00000.tfrecord").write_bytes(b"partial")
    another_writer = tmp_path / ".other.tmp-1"  # another folder's writer may still be live
    another_writer.mkdir()
    prepare.prepare(source, tmp_path / "prepared", 32)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [
        ".other.tmp-1", ".prepared.prepare.lock"]


def prepare_killed(source, output, point: str | None = None,
                   seconds: float = 300) -> tuple[int, float]:
    """`python -m catdog.data prepare` killed at the named crash point (or SIGKILLed after
    `seconds`): its exit status and how long it ran."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "catdog.data", "prepare", f"--data_dir={source}",
         f"--output_dir={output}", "--image_size=32", "--shard_images=5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, faults.CRASH_AT: point or ""})
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
    return process.wait(), time.perf_counter() - start


@pytest.mark.slow
def test_a_prepare_killed_at_each_point_or_at_a_random_moment_leaves_no_folder(source,
                                                                              tmp_path):
    """Killed at each crash point once, then at one seeded random moment (a check that the points
    are all there is): --output_dir does not exist, and the next prepare writes it whole."""
    output = tmp_path / "prepared"
    longest = 0.0
    for point in [p for p in faults.POINTS if p.startswith("prepare.")]:
        status, seconds = prepare_killed(source, output, point)
        assert status == -signal.SIGKILL, point
        assert not output.exists(), point
        longest = max(longest, seconds)  # the last point is at the end of the work
    prepare_killed(source, output, seconds=random.Random(5).uniform(0, longest))
    killed_whole = output.exists()
    if killed_whole:  # the kill came after the rename: the folder is whole
        assert data.verify_shards(output, data.read_manifest(output)) > 0
    else:
        prepare.prepare(source, output, 32, shard_images=5)
    assert sorted(p.name for p in tmp_path.iterdir() if "prepared" in p.name) == [
        ".prepared.prepare.lock", "prepared"]
    assert json.loads((output / data.PREPARED_MANIFEST).read_text())["image_size"] == 32


def test_a_full_disk_is_one_line_and_leaves_nothing(source, tmp_path, monkeypatch):
    def disk_full(*args):
        raise tf.errors.ResourceExhaustedError(None, None, "shard-00000.tfrecord; No space "
                                                           "left on device")

    monkeypatch.setattr(prepare, "_write_split", disk_full)
    with pytest.raises(CatdogError, match=f"^cannot write {tmp_path / 'prepared'}: "
                                          "shard-00000.tfrecord; No space left on device$"):
        prepare.prepare(source, tmp_path / "prepared", 32)
    assert [p.name for p in tmp_path.iterdir() if "prepared" in p.name] == [
        ".prepared.prepare.lock"]


def test_a_second_prepare_of_one_folder_is_refused_naming_the_first(source, tmp_path):
    with lock_held_by_another_process(tmp_path / ".prepared.prepare.lock") as pid:
        with pytest.raises(CatdogError, match=f"--output_dir={tmp_path / 'prepared'} is in use "
                                              f"by process {pid}"):
            prepare.prepare(source, tmp_path / "prepared", 32)
    assert not (tmp_path / "prepared").exists()


def test_a_failed_prepare_leaves_nothing_and_an_existing_folder_is_refused(
        source, tmp_path, monkeypatch):
    def fail_midway(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare, "_example", fail_midway)
    with pytest.raises(CatdogError, match="cannot write .*prepared: No space left on device"):
        prepare.prepare(source, tmp_path / "prepared", 32)
    assert not (tmp_path / "prepared").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    (tmp_path / "taken").mkdir()
    with pytest.raises(CatdogError, match="--output_dir=.*taken already exists"):
        prepare.prepare(source, tmp_path / "taken", 32)


@pytest.mark.slow
def test_training_on_prepared_shards_equals_training_on_the_jpegs(source, tmp_path):
    result = run_catdog("data", "prepare", f"--data_dir={source}",
                        f"--output_dir={tmp_path / 'prepared'}", "--image_size=32")
    assert result.returncode == 0, result.stderr
    assert "broken.jpg: " in result.stderr
    assert "prepared 32 training and 12 validation images at 32 px" in result.stdout
    settings = dict(weights="none", image_size=32, batch_size=8, epochs=2, rotation=0.1,
                    seed=3, strategy="default", mixed_precision="float32", publish="never")

    def run(data_dir, name, **more):
        return train.train(Config(data_dir=str(data_dir), run_dir=str(tmp_path / name),
                                  export_dir=str(tmp_path / f"{name}-export"),
                                  **{**settings, **more}))

    def metrics(result):
        return [[row[m] for m in ("loss", "accuracy", "val_loss", "val_accuracy")]
                for row in result.summary["epochs"]]

    straight = {}
    for more in ({}, dict(cache_features=True, flip="none", zoom=0.0, rotation=0.0)):
        on_jpegs = run(source, f"jpegs{len(more)}", **more)
        straight[len(more)] = on_shards = run(tmp_path / "prepared", f"shards{len(more)}", **more)
        np.testing.assert_allclose(metrics(on_shards), metrics(on_jpegs), atol=1e-6)
    # Resuming on prepared data: one epoch, then the same command with two, as one run of two.
    run(tmp_path / "prepared", "resumed", epochs=1)
    resumed = run(tmp_path / "prepared", "resumed")
    np.testing.assert_allclose(metrics(resumed), metrics(straight[0]), atol=1e-6)
