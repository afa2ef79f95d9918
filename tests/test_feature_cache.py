"""catdog.feature_cache: the same training as on images, seeded feature views drawn per epoch,
and a keyed disk cache that is reused and never stale."""

import dataclasses
import os
import shutil

import keras
import numpy as np
import pytest

from catdog import data, feature_cache, train
from catdog import model as model_lib
from catdog.config import Config
from catdog.errors import CatdogError

from conftest import leftovers


def config_for(dataset_dir, tmp_path, **overrides):
    settings = dict(data_dir=str(dataset_dir), weights="none", image_size=32, batch_size=8,
                    epochs=2, flip="none", zoom=0.0, seed=9, strategy="default",
                    run_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"),
                    publish="never")
    return Config(**{**settings, **overrides})


def assert_same_epochs(expected: dict, actual: dict, tolerance: float) -> None:
    """Every epoch's loss, accuracy, val_loss and val_accuracy agree within `tolerance`."""
    for a, b in zip(expected["epochs"], actual["epochs"]):
        for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[metric] == pytest.approx(b[metric], abs=tolerance), (a["epoch"], metric)


@pytest.mark.slow
def test_training_on_cached_features_equals_training_on_images(dataset_dir, tmp_path):
    on_images = train.train(config_for(dataset_dir, tmp_path / "a"))
    cached = train.train(config_for(dataset_dir, tmp_path / "b", cache_features=True))
    assert cached.summary["feature_seconds"] > 0
    assert_same_epochs(on_images.summary, cached.summary, 1e-4)
    # The export is the whole model, pixels in (in float32): as the one trained on images.
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    from catdog import inference
    reloaded, _ = inference.load_h5(cached.exports.h5)
    np.testing.assert_allclose(reloaded(pixels),
                               model_lib.in_policy(on_images.model, "float32")(pixels), atol=1e-4)


@pytest.mark.slow
def test_disk_cache_is_reused_and_never_stale(dataset_dir, tmp_path, monkeypatch):
    config = config_for(dataset_dir, tmp_path, cache_features=True,
                        feature_cache_dir=str(tmp_path / "cache"))
    train_files, _ = data.find_splits(dataset_dir, 0.0, seed=0)
    key = feature_cache.cache_key(config, train_files, "float32")
    assert key == feature_cache.cache_key(config, train_files, "float32")
    assert key != feature_cache.cache_key(dataclasses.replace(config, image_size=48), train_files,
                                     "float32")
    assert key != feature_cache.cache_key(dataclasses.replace(config, seed=10), train_files,
                                     "float32")
    assert key != feature_cache.cache_key(config, train_files, "mixed_float16")
    assert key != feature_cache.cache_key(config, train_files, "float32", views=3)
    augmented = dataclasses.replace(config, cache_features=True, feature_views=3, zoom=0.2)
    assert feature_cache.cache_key(augmented, train_files, "float32", views=3) != (
        feature_cache.cache_key(dataclasses.replace(augmented, zoom=0.3), train_files, "float32",
                                views=3))

    train.train(config)
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert [e.split("-")[0] for e in entries] == ["train", "validation"]

    def must_not_compute(*args, **kwargs):
        raise AssertionError("features were recomputed although the cache matches")

    monkeypatch.setattr(feature_cache, "compute_features", must_not_compute)
    train.train(dataclasses.replace(config, run_dir=str(tmp_path / "run2")))

    changed = train_files.paths[0]
    os.utime(changed, ns=(0, os.stat(changed).st_mtime_ns + 10**9))
    assert feature_cache.cache_key(config, train_files, "float32") != key
    with pytest.raises(AssertionError, match="recomputed"):
        train.train(dataclasses.replace(config, run_dir=str(tmp_path / "run3")))



def drawn(features: feature_cache.Features, seed) -> np.ndarray:
    return np.stack([f.numpy() for f, _ in features.dataset(seed)])


def test_each_epoch_draws_one_view_per_image_by_its_seed():
    rng = np.random.default_rng(0)
    features = feature_cache.Features(rng.normal(size=(4, 50, 512)).astype(np.float32),
                                      np.arange(50) % 2)
    np.testing.assert_array_equal(drawn(features, None), features.views[0])
    np.testing.assert_array_equal(drawn(features, 7), drawn(features, 7))  # a resumed epoch
    first, second = drawn(features, 7), drawn(features, 8)
    assert not np.array_equal(first, second)
    for chosen in (first, second):
        picks = [next(k for k in range(4) if np.array_equal(features.views[k, i], chosen[i]))
                 for i in range(50)]  # each row is one of that image's own views
        assert len(set(picks)) == 4
    single = feature_cache.Features(features.views[:1], features.labels)
    np.testing.assert_array_equal(drawn(single, 7), features.views[0])


def test_views_are_the_image_then_seeded_augmentations_of_it(dataset_dir):
    config = config_for(dataset_dir, dataset_dir, cache_features=True, feature_views=3,
                        flip="horizontal", zoom=0.3)
    keras.utils.set_random_seed(0)
    model = model_lib.build_classifier(2, 32, "none")
    extractor = model_lib.feature_extractor(model)
    files, _ = data.find_splits(dataset_dir, 0.0, seed=0)
    files = files.subset(range(0, len(files), 4))  # 8 photos of both classes
    decoded = data.decoded_images(files, 32)

    def views(seed):
        return feature_cache.compute_views(extractor, decoded, 8, len(files), "train",
                                           model_lib.build_augmenter(config), 3, seed)

    plain, _ = feature_cache.compute_features(extractor, decoded, 8, len(files), "train")
    first = views(config.seed)
    assert first.views.shape == (3, len(files), 512) and first.views.dtype == np.float32
    np.testing.assert_allclose(first.views[0], plain, atol=1e-6)
    assert not np.allclose(first.views[1], plain) and not np.allclose(first.views[2], plain)
    assert not np.allclose(first.views[1], first.views[2])
    np.testing.assert_array_equal(views(config.seed).views, first.views)  # seeded
    assert not np.allclose(views(config.seed + 1).views[1], first.views[1])


@pytest.mark.slow
def test_a_run_on_feature_views_resumes_as_if_never_stopped(dataset_dir, tmp_path):
    settings = dict(cache_features=True, feature_views=3, flip="horizontal", zoom=0.2,
                    epochs=3)
    whole = train.train(config_for(dataset_dir, tmp_path / "whole", **settings))
    stopped = config_for(dataset_dir, tmp_path / "parts", **settings)
    train.train(dataclasses.replace(stopped, epochs=1))
    resumed = train.train(stopped)
    assert_same_epochs(whole.summary, resumed.summary, 1e-5)
    assert len(resumed.summary["epochs"]) == 3


def fine_tuning(dataset_dir, root, **overrides):
    """One head epoch, then two from block4_conv1, on cached features."""
    return config_for(dataset_dir, root, **{**dict(
        cache_features=True, epochs=1, fine_tune_from="block4_conv1", fine_tune_epochs=2),
        **overrides})


@pytest.mark.slow
def test_fine_tuning_on_cached_frozen_blocks_equals_fine_tuning_on_images(dataset_dir, tmp_path):
    on_images = train.train(fine_tuning(dataset_dir, tmp_path / "a", cache_frozen_blocks=False))
    cached = train.train(fine_tuning(dataset_dir, tmp_path / "b"))
    assert [row["phase"] for row in cached.summary["epochs"]] == ["head", "fine_tune",
                                                                  "fine_tune"]
    assert_same_epochs(on_images.summary, cached.summary, 1e-4)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(cached.model(pixels), on_images.model(pixels), atol=1e-4)


def test_the_frozen_blocks_pass_keeps_block3_pool_of_every_view(dataset_dir):
    config = fine_tuning(dataset_dir, dataset_dir, feature_views=2, flip="horizontal")
    keras.utils.set_random_seed(0)
    model = model_lib.build_classifier(2, 32, "none")
    lower, upper = model_lib.split_at(model, "block4_conv1")
    files, _ = data.find_splits(dataset_dir, 0.0, seed=0)
    features = feature_cache.cached_features(lower, files, data.decoded_images(files, 32),
                                             config, "float32", "train",
                                             model_lib.build_augmenter(config), views=2)
    assert features.activations.shape == (2, len(files), 4, 4, 256)  # block3_pool at 32 px
    # The blocks above, on the kept activations, answer as the whole model on the images.
    np.testing.assert_allclose(upper(features.activations[0]), model.get_layer("probabilities")(
        model.get_layer("dense")(features.views[0])), atol=1e-5)
    # An epoch's batches hold each image once, shuffled, as the view its pooled features draw.
    batch, _ = next(iter(features.activation_batches(len(files), seed=5)))
    found = [np.argwhere((features.activations == row).all(axis=(2, 3, 4)))[0]
             for row in batch.numpy()]
    images = [int(i) for _, i in found]
    assert sorted(images) == list(range(len(files))) and images != sorted(images)
    pooled = drawn(features, 5)
    np.testing.assert_array_equal([pooled[i] for i in images],
                                  [features.views[k, i] for k, i in found])


def test_activations_beyond_the_memory_bound_are_mapped_from_disk(dataset_dir, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setattr(feature_cache, "ACTIVATIONS_IN_MEMORY_BYTES", 1000)
    config = fine_tuning(dataset_dir, tmp_path)
    model = model_lib.build_classifier(2, 32, "none")
    lower, _ = model_lib.split_at(model, "block4_conv1")
    files, _ = data.find_splits(dataset_dir, 0.0, seed=0)
    features = feature_cache.cached_features(lower, files, data.decoded_images(files, 32),
                                             config, "float32", "train")
    assert isinstance(features.activations, np.memmap)
    assert list((tmp_path / "run" / "feature_cache").glob("train-*/activations.npy"))
    assert not leftovers(tmp_path)
    in_memory = feature_cache.compute_views(lower, data.decoded_images(files, 32), 8,
                                            len(files), "train", None, 1, 0,
                                            np.empty(features.activations.shape, np.float32))
    np.testing.assert_allclose(features.activations, in_memory.activations, atol=1e-5)


@pytest.mark.slow
def test_fine_tuning_on_frozen_blocks_resumes_mid_phase_as_if_never_stopped(dataset_dir,
                                                                            tmp_path):
    settings = dict(feature_views=2, flip="horizontal", fine_tune_epochs=3)
    whole = train.train(fine_tuning(dataset_dir, tmp_path / "whole", **settings))
    stopped = fine_tuning(dataset_dir, tmp_path / "parts", **settings)
    train.train(dataclasses.replace(stopped, fine_tune_epochs=1))
    resumed = train.train(stopped)
    assert_same_epochs(whole.summary, resumed.summary, 1e-5)
    assert len(resumed.summary["epochs"]) == 4


def _entry_features(dataset_dir, config):
    """cached_features of the training photos with the frozen blocks' activations, as a
    fine-tuning run asks for them (random base weights, seeded by the config as a run seeds
    them)."""
    keras.utils.set_random_seed(config.seed)
    model = model_lib.build_classifier(2, 32, "none")
    lower, _ = model_lib.split_at(model, "block4_conv1")
    files, _ = data.find_splits(dataset_dir, 0.0, seed=0)
    return feature_cache.cached_features(lower, files, data.decoded_images(files, 32), config,
                                         "float32", "train")


def _damage_file(path, how: str) -> None:
    content = path.read_bytes()
    if how == "truncated":
        path.write_bytes(content[:len(content) // 2])
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "bit flipped":
        flipped = bytearray(content)
        flipped[len(content) * 3 // 4] ^= 0x10
        path.write_bytes(bytes(flipped))
    else:  # same size, other values: what a reader that checks only the shape would take
        path.write_bytes(content[:128] + np.random.default_rng(0).bytes(len(content) - 128))


@pytest.fixture(scope="module")
def clean_entry(dataset_dir_module, tmp_path_factory):
    """A feature cache holding one whole entry, computed once for the module: (config, cache
    folder, its features)."""
    root = tmp_path_factory.mktemp("clean")
    config = fine_tuning(dataset_dir_module, root, feature_cache_dir=str(root / "cache"))
    return config, root / "cache", _entry_features(dataset_dir_module, config)


@pytest.mark.parametrize("name, how", [
    ("activations.npy", "truncated"), ("activations.npy", "emptied"),
    ("activations.npy", "same size, garbage"), ("features.npz", "truncated"),
    ("features.npz", "bit flipped"), ("sha256.json", "emptied")])
def test_a_damaged_entry_is_one_warning_naming_it_and_is_computed_again(
        clean_entry, dataset_dir_module, tmp_path, caplog, name, how):
    config, clean_cache, clean = clean_entry
    shutil.copytree(clean_cache, tmp_path / "cache")
    config = dataclasses.replace(config, feature_cache_dir=str(tmp_path / "cache"))
    (entry,) = (tmp_path / "cache").glob("train-*")
    _damage_file(entry / name, how)
    caplog.clear()
    again = _entry_features(dataset_dir_module, config)
    warnings = [r.getMessage() for r in caplog.records  # catdog's (absl's), not TensorFlow's
                if r.levelname == "WARNING" and r.name == "absl"]
    assert warnings == [f"feature cache entry {entry} is damaged ("
                        + warnings[0].split("(", 1)[1]]  # one line naming the entry
    assert warnings[0].endswith("): computing it again")
    np.testing.assert_allclose(again.views, clean.views, atol=1e-6)
    np.testing.assert_allclose(again.activations, clean.activations, atol=1e-6)
    caplog.clear()
    _entry_features(dataset_dir_module, config)  # whole again: read without a word
    assert not [r for r in caplog.records if r.levelname == "WARNING" and r.name == "absl"]


def test_weights_are_known_by_their_content_not_their_size_and_time(dataset_dir, tmp_path):
    """A weights file rewritten with its size and modification time kept (cp -p, rsync -a,
    tar x) is other weights: another cache key."""
    weights = tmp_path / "vgg16.weights.h5"
    weights.write_bytes(b"a" * 4096)
    config = config_for(dataset_dir, tmp_path, weights=str(weights))
    files, _ = data.find_splits(dataset_dir, 0.0, seed=0)
    before = feature_cache.cache_key(config, files, "float32")
    stat = weights.stat()
    weights.write_bytes(b"b" * 4096)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert feature_cache.cache_key(config, files, "float32") != before


def test_mapped_activations_on_a_full_disk_are_one_line_not_sigbus(dataset_dir, tmp_path,
                                                                  small_disk, monkeypatch):
    """The activations' file is allocated whole before it is mapped: a disk without room for it
    is `cannot write ...: No space left on device`, and no half entry is left."""
    disk, _ = small_disk  # 40 MB; 2 views of 32 photos at 224 px need 51 MB
    monkeypatch.setattr(feature_cache, "ACTIVATIONS_IN_MEMORY_BYTES", 1000)
    config = fine_tuning(dataset_dir, tmp_path, feature_cache_dir=str(disk / "cache"),
                         feature_views=2, flip="horizontal")
    big = dataclasses.replace(config, image_size=224)
    model = model_lib.build_classifier(2, 224, "none")
    lower, _ = model_lib.split_at(model, "block4_conv1")
    files, _ = data.find_splits(dataset_dir, 0.0, seed=0)
    with pytest.raises(CatdogError, match=r"^cannot write .*/cache/train-\w+: No space left on "
                                          r"device$"):
        feature_cache.cached_features(lower, files, data.decoded_images(files, 224), big,
                                      "float32", "train", views=2)
    assert not leftovers(disk)
