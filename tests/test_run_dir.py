"""Run folder: resuming with incompatible flags is refused; history is cut back to the
checkpoint."""

import dataclasses

import pytest

from catdog.config import Config
from catdog.errors import CatdogError
from catdog.run_dir import RunDir


def test_resuming_with_different_training_flags_is_refused(tmp_path):
    config = Config(data_dir="d", run_dir=str(tmp_path))
    RunDir(tmp_path).open(config)
    (tmp_path / "checkpoints" / "ckpt-1.index").write_bytes(b"")  # a finished epoch
    RunDir(tmp_path).open(dataclasses.replace(config, epochs=20, export_dir="elsewhere"))
    with pytest.raises(CatdogError, match=r"--run_dir=.* holds a run started with "
                                          r"--batch_size=16, not 32; use those flags to resume"):
        RunDir(tmp_path).open(dataclasses.replace(config, batch_size=32))


def test_a_run_that_failed_before_its_first_epoch_pins_no_flags(tmp_path):
    """The README's default command fails to download; its offline route must then work."""
    RunDir(tmp_path / "run").open(Config(data_dir="data/cats_and_dogs_filtered", download=True))
    weights = tmp_path / "vgg16.h5"
    weights.write_bytes(b"")
    offline = Config(data_dir="/elsewhere/cats_vs_dogs", weights=str(weights))
    RunDir(tmp_path / "run").open(offline)
    assert '"/elsewhere/cats_vs_dogs"' in (tmp_path / "run" / "config.json").read_text()


def test_history_keeps_only_epochs_that_have_a_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    run.open(Config(data_dir="d"))
    rows = [{"epoch": e, "phase": "head", "loss": 1.0 / e, "accuracy": 0.5, "val_loss": 1.0,
             "val_accuracy": 0.5, "seconds": 1.0, "images_per_second": 10.0} for e in (1, 2, 3)]
    for row in rows:
        run.append_history(row)
    assert run.read_history(2) == rows[:2]
    assert RunDir(tmp_path).read_history(3) == rows[:2]
