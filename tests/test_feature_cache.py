"""Feature caching: same training as on images, keyed disk cache, refused with augmentation."""

import dataclasses
import os

import numpy as np
import pytest

from catdog import data, feature_cache, train
from catdog.config import Config


def config_for(dataset_dir, tmp_path, **overrides):
    settings = dict(data_dir=str(dataset_dir), weights="none", image_size=32, batch_size=8,
                    epochs=2, flip="none", zoom=0.0, seed=9, strategy="default",
                    run_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
    return Config(**{**settings, **overrides})


@pytest.mark.slow
def test_training_on_cached_features_equals_training_on_images(dataset_dir, tmp_path):
    on_images = train.train(config_for(dataset_dir, tmp_path / "a"))
    cached = train.train(config_for(dataset_dir, tmp_path / "b", cache_features=True))
    assert cached.summary["feature_seconds"] > 0
    for a, b in zip(on_images.summary["epochs"], cached.summary["epochs"]):
        for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[metric] == pytest.approx(b[metric], abs=1e-4), (a["epoch"], metric)
    # The export is the whole model, pixels in: same as the one trained on images.
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    from catdog import inference
    reloaded, _ = inference.load_h5(cached.exports.h5)
    np.testing.assert_allclose(reloaded(pixels), on_images.model(pixels), atol=1e-4)


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

    train.train(config)
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
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

