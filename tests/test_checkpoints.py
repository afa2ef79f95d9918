"""catdog.checkpoints: a damaged checkpoint falls back to an older one, and a full disk ends the
run in one line with no temporary left behind; the same command succeeds afterwards."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from catdog import distribute, train
from catdog.checkpoints import Checkpoints, Progress
from catdog.errors import CatdogError
from catdog.run_dir import RunDir
from catdog.steps import Trainer

from conftest import fast_config, leftovers, run_catdog


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, dataset_dir_module):
    root = tmp_path_factory.mktemp("finished")
    train.train(fast_config(dataset_dir_module, root))
    return root


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif how == "zeroed":
        path.write_bytes(bytes(len(data)))
    elif how == "deleted":
        path.unlink()
    elif how == "bit-flipped":
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x40
        path.write_bytes(bytes(flipped))


def _newest_checkpoint_file(root: Path, part: str) -> Path:
    """The data or index file of the finished run's newest checkpoint (epoch 3)."""
    checkpoints = root / "run" / "checkpoints"
    return (next(checkpoints.glob("ckpt-3.data-*")) if part == "data"
            else checkpoints / "ckpt-3.index")


@pytest.mark.slow
def test_a_run_whose_newest_checkpoint_is_damaged_goes_on_from_the_one_before(
        finished_run, dataset_dir_module, tmp_path, caplog):
    root = tmp_path / "copy"
    shutil.copytree(finished_run, root)
    _damage(_newest_checkpoint_file(root, "data"), "truncated")
    result = train.train(fast_config(dataset_dir_module, root, epochs=4))
    assert [row["epoch"] for row in result.summary["epochs"]] == [1, 2, 3, 4]
    assert "cannot be restored" in caplog.text and "ckpt-3" in caplog.text
    assert not leftovers(root)


@pytest.mark.slow
@pytest.mark.parametrize("part", ["data", "index"])
@pytest.mark.parametrize("how", ["truncated", "zeroed", "deleted", "bit-flipped"])
def test_each_damage_to_the_newest_checkpoint_falls_back_to_the_one_before(
        finished_run, dataset_dir_module, tmp_path, part, how, caplog):
    """What a resuming run restores (the test above: the run then goes on from there)."""
    root = tmp_path / "copy"
    shutil.copytree(finished_run, root)
    _damage(_newest_checkpoint_file(root, part), how)
    config = fast_config(dataset_dir_module, root, epochs=4)
    trainer = Trainer(config, 2, distribute.setup_distribution(config))
    checkpoints = Checkpoints(RunDir(config.run_dir), trainer.model, trainer.optimizers(),
                              Progress())
    assert checkpoints.restore_last() == 2
    (warning,) = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
    assert "ckpt-3" in warning


@pytest.mark.slow
def test_a_damaged_checkpoint_state_file_hides_no_checkpoint(finished_run, dataset_dir_module,
                                                             tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(finished_run, root)
    (root / "run" / "checkpoints" / "checkpoint").write_bytes(b"\x00garbage{{")
    result = train.train(fast_config(dataset_dir_module, root, epochs=4))
    assert [row["epoch"] for row in result.summary["epochs"]] == [1, 2, 3, 4]


@pytest.mark.slow
def test_no_restorable_checkpoint_is_one_line_naming_the_fix(finished_run, dataset_dir_module,
                                                             tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(finished_run, root)
    for index in (root / "run" / "checkpoints").glob("ckpt-*.index"):
        index.write_bytes(b"")
    config = fast_config(dataset_dir_module, root, epochs=4)
    with pytest.raises(CatdogError, match="no checkpoint under .* can be restored .*new --run_dir"):
        train.train(config)


@pytest.mark.slow
def test_a_damaged_best_checkpoint_exports_the_last_epoch_instead(finished_run,
                                                                 dataset_dir_module, tmp_path,
                                                                 caplog):
    root = tmp_path / "copy"
    shutil.copytree(finished_run, root)
    for data in (root / "run" / "checkpoints" / "best").glob("ckpt-*.data-*"):
        _damage(data, "zeroed")
    result = train.train(fast_config(dataset_dir_module, root))
    assert "best checkpoint" in caplog.text and "last epoch's weights" in caplog.text
    assert result.exports.saved_model.exists()


@pytest.mark.slow
@pytest.mark.parametrize("full", ["run_dir", "export_dir"])
def test_a_full_disk_is_one_line_leaves_no_temporaries_and_the_rerun_succeeds(
        small_disk, dataset_dir_module, tmp_path, full):
    disk, grow = small_disk
    elsewhere = tmp_path / "elsewhere"
    run_dir = disk / "run" if full == "run_dir" else elsewhere / "run"
    export_dir = disk / "export" if full == "export_dir" else elsewhere / "export"
    args = ["train", f"--data_dir={dataset_dir_module}", "--weights=none", "--image_size=32",
            "--batch_size=8", "--epochs=2", "--flip=none", "--rotation=0", "--zoom=0",
            "--cache_features", "--publish=never", f"--run_dir={run_dir}",
            f"--export_dir={export_dir}"]
    result = run_catdog(*args)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], result.stderr[-2000:]
    assert str(disk) in errors[0] and "Traceback" not in result.stderr
    assert not leftovers(disk, elsewhere)
    grow("2g")
    rerun = run_catdog(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (export_dir / "candidates" / "catdog" / "1" / "saved_model.pb").exists()
    assert not leftovers(disk, elsewhere)
