"""Training under faults: damaged checkpoints, a full disk, SIGKILL at seeded random moments.

Each case must end in a fallback or in one line without a traceback, leave no temporary file or
folder behind, keep what was already written intact, and let the same command succeed later.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from catdog import train
from catdog.config import Config
from catdog.errors import CatdogError
from conftest import run_catdog


def fast_config(dataset_dir: Path, root: Path, **overrides) -> Config:
    """A run whose epochs take a second: 32 px, random VGG16, cached features."""
    settings = dict(data_dir=str(dataset_dir), weights="none", image_size=32, batch_size=8,
                    epochs=3, flip="none", rotation=0.0, zoom=0.0, cache_features=True,
                    run_dir=str(root / "run"), export_dir=str(root / "export"), seed=3)
    return Config(**{**settings, **overrides})


def leftovers(*folders: Path) -> list[Path]:
    """Temporaries anywhere under the folders: catdog's hidden ones and TensorFlow's."""
    return [p for folder in folders if folder.exists() for p in folder.rglob("*")
            if ".tmp-" in p.name or "_temp" in p.name]


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


@pytest.mark.slow
@pytest.mark.parametrize("part", ["data", "index"])
@pytest.mark.parametrize("how", ["truncated", "zeroed", "deleted", "bit-flipped"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(
        finished_run, dataset_dir_module, tmp_path, part, how, caplog):
    root = tmp_path / "copy"
    shutil.copytree(finished_run, root)
    checkpoints = root / "run" / "checkpoints"
    newest = (next(checkpoints.glob("ckpt-3.data-*")) if part == "data"
              else checkpoints / "ckpt-3.index")
    _damage(newest, how)
    result = train.train(fast_config(dataset_dir_module, root, epochs=4))
    assert [row["epoch"] for row in result.summary["epochs"]] == [1, 2, 3, 4]
    assert "cannot be restored" in caplog.text and "ckpt-3" in caplog.text
    assert not leftovers(root)


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


def test_a_rerun_after_the_export_writes_no_identical_version(dataset_dir_module, tmp_path):
    config = fast_config(dataset_dir_module, tmp_path, epochs=1)
    train.train(config)
    (tmp_path / "run" / "summary.json").unlink()  # as if killed between export and summary
    result = train.train(config)
    assert sorted(p.name for p in (tmp_path / "export" / "catdog").iterdir()) == ["1"]
    assert result.exports.saved_model.name == "1"


# --- a full disk --------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a few MB (root only), grown later with `grow(size)`."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount_point)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"a small disk needs mounting a tmpfs (root): {error}")

    def grow(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)

    yield mount_point, grow
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


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
            "--cache_features", f"--run_dir={run_dir}", f"--export_dir={export_dir}"]
    result = run_catdog(*args)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], result.stderr[-2000:]
    assert str(disk) in errors[0] and "Traceback" not in result.stderr
    assert not leftovers(disk, elsewhere)
    grow("2g")
    rerun = run_catdog(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (export_dir / "catdog" / "1" / "saved_model.pb").exists()
    assert not leftovers(disk, elsewhere)


# --- SIGKILL at seeded random moments -----------------------------------------------------------

@pytest.mark.slow
def test_sigkill_at_random_moments_then_the_rerun_finishes_cleanly(dataset_dir_module, tmp_path):
    """Three kills (seed 0) at random times within a run; each rerun resumes; the last ends with
    every epoch, one export version and no temporaries."""
    rng = random.Random(0)
    args = [sys.executable, "-m", "catdog.train", f"--data_dir={dataset_dir_module}",
            "--weights=none", "--image_size=32", "--batch_size=8", "--epochs=4", "--flip=none",
            "--rotation=0", "--zoom=0", "--cache_features", f"--run_dir={tmp_path / 'run'}",
            f"--export_dir={tmp_path / 'export'}"]
    for _ in range(3):
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4.0, 14.0))  # a random moment, not a synchronisation
        process.send_signal(signal.SIGKILL)
        process.wait()
    final = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    metrics = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in metrics[1:]] == ["1", "2", "3", "4"]
    assert len([p for p in (tmp_path / "export" / "catdog").iterdir()]) == 1
    assert not leftovers(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_cleanly_in_one_line_and_the_rerun_resumes(
        dataset_dir_module, tmp_path, signum):
    args = [sys.executable, "-m", "catdog.train", f"--data_dir={dataset_dir_module}",
            "--weights=none", "--image_size=32", "--batch_size=8", "--epochs=3", "--flip=none",
            "--rotation=0", "--zoom=0", "--cache_features", f"--run_dir={tmp_path / 'run'}",
            f"--export_dir={tmp_path / 'export'}"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "Epoch 2/3" in line:
            process.send_signal(signum)
            break
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130
    assert "Traceback" not in rest
    assert "interrupted: epoch 1 of 3 is saved in" in rest and "run the same command" in rest
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resuming" in again.stderr and "after epoch 1" in again.stderr
