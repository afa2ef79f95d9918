"""catdog.data_service and --data_service: a dispatcher and two workers on 127.0.0.1 feed the
training batches, each image once per epoch, and a run trains on them as on local input."""

import collections

import numpy as np
import pytest

from catdog import data, data_service, train
from catdog.config import Config


@pytest.fixture(scope="module")
def service():
    dispatcher = data_service.start_dispatcher(0)
    workers = [data_service.start_worker(dispatcher.target) for _ in range(2)]
    yield dispatcher.target
    for server in [*workers, dispatcher]:
        server.stop()


def test_each_training_image_comes_once_per_epoch(service, dataset_dir):
    files, _ = data.find_splits(dataset_dir, 0.0, seed=0)
    counts = collections.Counter()
    for epoch in (1, 2):
        for images, labels in data.service_batches(files, 32, 5, epoch, service):
            assert images.shape[1:] == (32, 32, 3) and images.dtype.name == "float32"
            counts.update(np.asarray(images).reshape(len(labels), -1).sum(axis=1).round(2))
    per_image = collections.Counter(counts.values())
    assert sum(counts.values()) == 2 * len(files)
    assert set(per_image) == {2}, per_image  # every image twice in two epochs, none more


@pytest.mark.slow
def test_a_run_trains_on_the_service_as_on_local_input(service, dataset_dir, tmp_path):
    """At a learning rate too small to move the weights, an epoch's mean training loss is the
    mean over every training image of the untrained model's loss, whatever the order and
    batching: equal on both inputs only if the workers fed each image exactly once."""
    settings = dict(data_dir=str(dataset_dir), weights="none", image_size=32, batch_size=8,
                    epochs=1, flip="none", zoom=0.0, seed=5, strategy="default",
                    mixed_precision="float32", learning_rate=1e-9, publish="never")
    local = train.train(Config(**settings, run_dir=str(tmp_path / "local"),
                               export_dir=str(tmp_path / "local-export")))
    served = train.train(Config(**settings, data_service=service,
                                run_dir=str(tmp_path / "served"),
                                export_dir=str(tmp_path / "served-export")))
    a, b = local.summary["epochs"][0], served.summary["epochs"][0]
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert b[metric] == pytest.approx(a[metric], abs=1e-5), metric


def test_prepared_shards_come_once_per_epoch_too(service, dataset_dir, tmp_path):
    from catdog import prepare

    prepare.prepare(dataset_dir, tmp_path / "prepared", 32, shard_images=6)
    files, _ = data.prepared_splits(tmp_path / "prepared", 32)
    seen = collections.Counter()
    for images, labels in data.service_batches(files, 32, 5, 1, service):
        seen.update(np.asarray(images).reshape(len(labels), -1).sum(axis=1).round(2))
    assert sum(seen.values()) == len(files) and set(seen.values()) == {1}
