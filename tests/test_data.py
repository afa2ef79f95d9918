"""Data: finding classes and files, bad-file detection, decoding, batches, and the download."""

import functools
import hashlib
import http.server
import os
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from catdog import data, data_cli, images
from catdog.config import Config
from catdog.errors import CatdogError

from conftest import CLASSES, class_image, png_bomb, run_catdog, write_split


def config_for(data_dir, **overrides) -> Config:
    return Config(data_dir=str(data_dir), **overrides)


# --- finding files ---------------------------------------------------------------------------

def test_class_names_are_sorted_folder_names_and_label_files(dataset_dir):
    train, validation = data.find_splits(dataset_dir, 0.0, seed=0)
    assert train.class_names == validation.class_names == CLASSES
    assert len(train) == 32 and len(validation) == 12
    for path, label in zip(train.paths, train.labels):
        assert Path(path).parent.name == CLASSES[label]


def test_validation_split_holds_out_part_of_each_class_reproducibly(tmp_path):
    root = write_split(tmp_path / "flat", 10)
    train, validation = data.find_splits(root, 0.2, seed=3)
    assert validation.class_counts() == {"cats": 2, "dogs": 2}
    assert train.class_counts() == {"cats": 8, "dogs": 8}
    assert not set(train.paths) & set(validation.paths)
    assert data.find_splits(root, 0.2, seed=3) == (train, validation)


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist or is not a folder"),
    ("empty", "has no train/ and validation/ sub-folders"),
    ("one_class", "has 1 class sub-folder(s) ['cats']; it needs one sub-folder per class and at "
                  "least two classes"),
    ("empty_class", "holds no images"),
    ("mismatched", "both must have the same class sub-folders"),
])
def test_unusable_layouts_are_refused_with_a_clear_message(tmp_path, layout, message):
    root = tmp_path / "d"
    if layout == "empty":
        root.mkdir()
    elif layout == "one_class":
        write_split(root, 2)
        shutil.rmtree(root / "dogs")
    elif layout == "empty_class":
        write_split(root / "train", 2)
        write_split(root / "validation", 2)
        shutil.rmtree(root / "train" / "dogs")
        (root / "train" / "dogs").mkdir()
    elif layout == "mismatched":
        write_split(root / "train", 2)
        write_split(root / "validation", 2)
        (root / "validation" / "dogs").rename(root / "validation" / "birds")
    split = 0.5 if layout == "one_class" else 0.0
    with pytest.raises(CatdogError) as error:
        data.find_splits(root, split, seed=0)
    assert message in str(error.value)


# --- bad files -------------------------------------------------------------------------------

def write_bad_files(folder: Path) -> dict[str, str]:
    """One file of each unusable kind; returns {file name: expected reason fragment}."""
    good = Path(folder / "good.jpg")
    Image.fromarray(class_image("cats", np.random.default_rng(0))).save(good)
    jpeg = good.read_bytes()
    good.unlink()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "corrupt.jpg").write_bytes(jpeg[:20] + bytes(200) + jpeg[220:])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    (folder / "notes.txt").write_text("a note")
    return {"truncated.jpg": "Invalid JPEG data", "corrupt.jpg": "", "empty.jpg": "empty",
            "text.png": "Unknown image file format", "notes.txt": "unsupported extension '.txt'"}


def test_each_kind_of_bad_file_is_found_and_reported_by_path(tmp_path):
    folder = tmp_path / "cats"
    folder.mkdir()
    expected = write_bad_files(folder)
    (folder / ".DS_Store").write_bytes(b"\0")  # hidden files are not candidates at all
    paths = sorted(str(p) for p in folder.iterdir() if not p.name.startswith("."))
    bad = {Path(item.path).name: item.reason for item in data.check_images(paths)}
    assert set(bad) == set(expected)
    for name, fragment in expected.items():
        assert fragment in bad[name]


def test_a_check_record_skips_files_checked_before_and_unchanged(tmp_path, monkeypatch):
    write_split(tmp_path / "photos", 3, seed=1)
    paths = sorted(str(p) for p in (tmp_path / "photos").rglob("*.jpg"))
    broken = tmp_path / "photos" / "cats" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    paths.append(str(broken))
    record = tmp_path / "cache" / data.CHECKED_RECORD
    decoded = []
    real = data.image_problem
    monkeypatch.setattr(data, "image_problem",
                        lambda path, limit, **kw: decoded.append(path) or real(path, limit, **kw))

    first = data.check_images(paths, record=record)
    assert sorted(decoded) == sorted(paths) and [b.path for b in first] == [str(broken)]
    decoded.clear()
    again = data.check_images(paths, record=record)
    assert decoded == [] and again == first  # the bad file stays reported, undecoded
    touched = paths[0]
    os.utime(touched, ns=(0, os.stat(touched).st_mtime_ns + 10**9))
    data.check_images(paths, record=record)
    assert decoded == [touched]
    decoded.clear()
    data.check_images(paths, max_pixels=100, record=record)  # another limit: all again
    assert sorted(decoded) == sorted(paths)


# --- the photos' roles: training, selection, evaluation -----------------------------------------

def all_roles(splits: data.Splits) -> list[set[str]]:
    return [set(files.paths) for files in (splits.train, splits.validation, splits.evaluation)]


def test_without_a_test_folder_a_fixed_stratified_half_of_validation_evaluates(dataset_dir):
    splits = data.prepare_splits(config_for(dataset_dir))
    train, selection, evaluation = all_roles(splits)
    assert not (train & selection or train & evaluation or selection & evaluation)
    assert selection | evaluation == {str(p) for p in (dataset_dir / "validation").rglob("*.jpg")}
    assert splits.evaluation.class_counts() == {"cats": 3, "dogs": 3}
    assert splits.evaluation_source == ("0.5 of the validation photos of each class, the same "
                                        "in every run (--evaluation_split)")
    # Another seed trains differently but keeps the same photos apart: a candidate and the
    # baseline it is compared with are both judged on photos that neither chose.
    assert all_roles(data.prepare_splits(config_for(dataset_dir, seed=7))) == all_roles(splits)


def test_with_validation_split_the_evaluation_photos_are_held_out_of_every_seed(tmp_path):
    root = write_split(tmp_path / "photos", 20, seed=1)
    evaluations = []
    for seed in (1, 2):
        splits = data.prepare_splits(config_for(root, validation_split=0.4, seed=seed))
        train, selection, evaluation = all_roles(splits)
        assert (len(train), len(selection), len(evaluation)) == (24, 8, 8)
        assert not (train & selection or train & evaluation or selection & evaluation)
        evaluations.append(evaluation)
    assert evaluations[0] == evaluations[1]


def test_a_test_folder_evaluates_and_all_validation_photos_select(dataset_dir):
    write_split(dataset_dir / "test", 2, seed=9)
    splits = data.prepare_splits(config_for(dataset_dir))
    assert len(splits.validation) == 12 and len(splits.evaluation) == 4
    assert all(Path(p).parent.parent.name == "test" for p in splits.evaluation.paths)
    assert splits.evaluation_source == "the test/ folder"


def test_the_run_says_in_one_line_which_photos_select_and_which_evaluate(dataset_dir, caplog):
    with caplog.at_level("INFO", logger="absl"):
        data.prepare_splits(config_for(dataset_dir))
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("photos:")]
    assert line == ("photos: 32 train, 6 select the best epoch, 6 evaluate (0.5 of the "
                    "validation photos of each class, the same in every run "
                    "(--evaluation_split))")


def test_no_evaluation_photos_is_said_and_too_few_to_split_is_one_line(dataset_dir, tmp_path):
    splits = data.prepare_splits(config_for(dataset_dir, evaluation_split=0))
    assert splits.evaluation is None and len(splits.validation) == 12
    tiny = tmp_path / "tiny"
    write_split(tiny / "train", 2)
    write_split(tiny / "validation", 1)
    with pytest.raises(CatdogError, match=r"^class 'cats' has one image; --evaluation_split=0.5 "
                                          r"keeps part .* or pass --evaluation_split=0 "):
        data.prepare_splits(config_for(tiny))


def test_skip_drops_bad_files_and_fail_stops_naming_one(dataset_dir):
    expected = write_bad_files(dataset_dir / "train" / "dogs")
    splits = data.prepare_splits(config_for(dataset_dir, on_bad_image="skip"))
    assert len(splits.bad_images) == len(expected)
    assert len(splits.train) == 32 and len(splits.validation) == len(splits.evaluation) == 6
    with pytest.raises(CatdogError, match=r"5 file\(s\) under .* cannot be decoded, first .*"
                                          r"--on_bad_image=skip"):
        data.prepare_splits(config_for(dataset_dir, on_bad_image="fail"))


def test_a_class_left_with_only_bad_files_stops_the_run(dataset_dir):
    for f in (dataset_dir / "validation" / "dogs").iterdir():
        f.write_bytes(b"")
    with pytest.raises(CatdogError, match="class 'dogs' has no decodable images among the "
                                          "selection photos"):
        data.prepare_splits(config_for(dataset_dir, evaluation_split=0))


def test_check_cli_lists_bad_files_and_exits_non_zero(dataset_dir):
    folder = dataset_dir / "validation" / "cats"
    write_bad_files(folder)
    jpeg = next(folder.glob("cats.*.jpg")).read_bytes()
    (folder / "cut.jpg").write_bytes(jpeg[:len(jpeg) * 3 // 4])  # ends mid-scan
    result = run_catdog("data", "check", str(dataset_dir))
    assert result.returncode == 1
    listed = [line.split(":")[0] for line in result.stdout.splitlines()]
    assert sorted(Path(p).name for p in listed) == sorted(
        ["corrupt.jpg", "cut.jpg", "empty.jpg", "notes.txt", "text.png", "truncated.jpg"])
    assert "6 bad file(s)" in result.stderr
    # libjpeg's reason is on the file's own line, not a native log line of its own
    (cut,) = [line for line in result.stdout.splitlines() if "cut.jpg" in line]
    assert "Premature end of JPEG data. Stopped at line" in cut
    assert "jpeg_mem" not in result.stderr and "Premature" not in result.stderr


# --- decoding --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, mode", [
    ("gray.png", "L"), ("rgba.png", "RGBA"), ("palette.png", "P"), ("rgb.bmp", "RGB"),
    ("anim.gif", "P"), ("cmyk.jpg", "CMYK"), ("gray.jpg", "L"),
])
def test_every_supported_kind_decodes_to_rgb(tmp_path, name, mode):
    rgb = class_image("dogs", np.random.default_rng(0))
    path = tmp_path / name
    Image.fromarray(rgb).convert(mode).save(path)
    image = images.load_image(tf.constant(str(path)), 32)
    assert image.shape == (32, 32, 3) and image.dtype == tf.uint8
    reference = np.asarray(Image.open(path).convert("RGB").resize((32, 32)), np.float32)
    assert np.abs(image.numpy().mean(axis=(0, 1)) - reference.mean(axis=(0, 1))).max() < 12


def test_batches_have_the_expected_shapes_dtypes_and_labels(dataset_dir):
    train, _ = data.find_splits(dataset_dir, 0.0, seed=0)
    decoded = data.decoded_images(train, 48)
    batches = list(data.batches(decoded, 10))
    assert [b[0].shape for b in batches] == [(10, 48, 48, 3)] * 3 + [(2, 48, 48, 3)]
    images, labels = batches[0]
    assert images.dtype == tf.float32 and labels.dtype == tf.int32
    assert 0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255
    all_labels = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(all_labels, train.labels)
    # Cats are tinted red, dogs blue: the decoded pixels carry the class.
    red_minus_blue = np.concatenate(
        [(b[0][..., 0] - b[0][..., 2]).numpy().mean(axis=(1, 2)) for b in batches])
    assert ((red_minus_blue > 0) == (all_labels == 0)).all()


def test_shuffle_is_seeded(dataset_dir):
    train, _ = data.find_splits(dataset_dir, 0.0, seed=0)
    decoded = data.decoded_images(train, 32)

    def order(seed):
        return np.concatenate([b[1].numpy() for b in data.batches(decoded, 8, shuffle_seed=seed)])

    assert (order(1) == order(1)).all()
    assert not (order(1) == order(2)).all()
    assert sorted(order(1)) == sorted(train.labels)


# --- download --------------------------------------------------------------------------------

@pytest.fixture
def served_zip(tmp_path):
    """A cats_and_dogs_filtered-style zip served over HTTP on 127.0.0.1; yields (url, sha256)."""
    source = tmp_path / "source" / "cats_and_dogs_filtered"
    write_split(source / "train", 2)
    write_split(source / "validation", 1)
    archive = tmp_path / "www" / "cats_and_dogs_filtered.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(source.rglob("*")):
            z.write(f, f.relative_to(source.parent))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(archive.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/{archive.name}"
    yield url, hashlib.sha256(archive.read_bytes()).hexdigest()
    server.shutdown()
    server.server_close()


def test_download_fetches_checks_and_unpacks_the_dataset(tmp_path, served_zip):
    url, sha256 = served_zip
    target = tmp_path / "data" / "cats_and_dogs_filtered"
    assert data.download_dataset(url, target, sha256) == target
    train, validation = data.find_splits(target, 0.0, seed=0)
    assert (len(train), len(validation)) == (4, 2)
    assert [p.name for p in target.parent.iterdir()] == ["cats_and_dogs_filtered"]


def test_download_with_wrong_sha256_leaves_nothing_behind(tmp_path, served_zip):
    url, _ = served_zip
    target = tmp_path / "data" / "cats_and_dogs_filtered"
    with pytest.raises(CatdogError, match="does not match --download_sha256=0000"):
        data.download_dataset(url, target, "0" * 64)
    assert list(target.parent.iterdir()) == []


def test_a_failed_download_is_a_clear_error(tmp_path, served_zip):
    url, sha256 = served_zip
    with pytest.raises(CatdogError, match=f"--data_dir={tmp_path / 'd'} does not exist, and "
                       "--download could not fetch it: could not download "
                       "http://127.0.0.1:.*/missing.zip .*without internet.*--data_dir=.*"
                       "--weights="):
        data.download_dataset(url.rsplit("/", 1)[0] + "/missing.zip", tmp_path / "d", sha256)


def test_training_run_downloads_a_missing_data_dir(tmp_path, served_zip):
    url, sha256 = served_zip
    target = tmp_path / "data" / "cats_and_dogs_filtered"
    splits = data.prepare_splits(config_for(target, download=True, download_url=url,
                                            download_sha256=sha256, evaluation_split=0))
    assert splits.class_names == CLASSES and len(splits.train) == 4


@pytest.mark.slow  # the verb's wiring; what it runs: the tests above, in-process
def test_download_cli(tmp_path, served_zip):
    url, sha256 = served_zip
    target = tmp_path / "cats_and_dogs_filtered"
    result = run_catdog("data", "download", f"--data_dir={target}", f"--download_url={url}",
                        f"--download_sha256={sha256}")
    assert result.returncode == 0, result.stderr
    assert (target / "train" / "dogs").is_dir()


# --- hostile folders and files ------------------------------------------------------------------

def _one_class_tree(root: Path) -> Path:
    write_split(root, per_class=2)
    return root


def test_a_symlink_loop_lists_each_photo_once(tmp_path):
    root = _one_class_tree(tmp_path / "data")
    os.symlink(root / "cats", root / "cats" / "loop")  # cats/loop → cats
    files = data.list_images(root, data.class_names_in(root))
    assert sorted(Path(p).name for p in files.paths if "cats" in Path(p).name) == [
        "cats.0.jpg", "cats.1.jpg"]
    assert len(files) == 4


def test_a_link_to_another_class_is_reported_not_mislabelled(tmp_path):
    root = _one_class_tree(tmp_path / "data")
    os.symlink(root / "dogs", root / "cats" / "more")
    files = data.list_images(root, data.class_names_in(root))
    assert [files.labels[i] for i, p in enumerate(files.paths) if "dogs." in p] == [1, 1]
    (skipped,) = files.skipped
    assert skipped.path.endswith("cats/more") and "inside another class's folder" in skipped.reason


def test_links_to_photos_elsewhere_are_used(tmp_path):
    root = _one_class_tree(tmp_path / "data")
    pool = tmp_path / "pool"
    pool.mkdir()
    shutil.move(root / "cats" / "cats.0.jpg", pool / "cats.0.jpg")
    os.symlink(pool / "cats.0.jpg", root / "cats" / "cats.0.jpg")  # a symlink farm
    files = data.list_images(root, data.class_names_in(root))
    assert len(files) == 4 and not files.skipped


def test_fifos_and_device_links_are_skipped_with_a_reason_never_read(tmp_path):
    root = _one_class_tree(tmp_path / "data")
    os.mkfifo(root / "cats" / "pipe.jpg")  # reading it would block forever
    os.symlink("/dev/zero", root / "dogs" / "zero.jpg")  # reading it would never end
    bad = {Path(b.path).name: b.reason for b in data.check_folder(str(root))}
    assert "a FIFO, not a regular file" in bad["pipe.jpg"]
    assert "a device, not a regular file" in bad["zero.jpg"]


def test_a_bomb_is_refused_by_data_check_and_by_training(tmp_path, capsys):
    root = _one_class_tree(tmp_path / "data")
    (root / "cats" / "bomb.png").write_bytes(png_bomb())
    assert data_cli.check(str(root), images.MAX_IMAGE_PIXELS) == 1  # `catdog.data check`
    assert "bomb.png: image declares 529000000 pixels" in capsys.readouterr().out
    config = Config(data_dir=str(root), validation_split=0.5, evaluation_split=0,
                    on_bad_image="skip")
    splits = data.prepare_splits(config)
    assert [Path(b.path).name for b in splits.bad_images] == ["bomb.png"]
    assert "--max_image_pixels" in splits.bad_images[0].reason
