"""catdog.train end to end: exports that reload in a fresh process, run files, resuming after a
kill, SIGKILL at each crash point and at a seeded random moment, Ctrl-C and SIGTERM, and a rerun
after the export."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from catdog import faults, train
from catdog.config import Config
from catdog.errors import CatdogError

from conftest import fast_config, leftovers, run_catdog, run_python

RELOAD_EXPORTS = """
import sys, numpy as np, tensorflow as tf
from catdog import inference
h5_path, saved_model_path, pixels_path, out_path = sys.argv[1:]
pixels = np.load(pixels_path)
model, h5_classes = inference.load_h5(h5_path)
serving = tf.saved_model.load(saved_model_path).signatures["predict_pixels"]
outputs = serving(pixels=tf.constant(pixels))
np.savez(out_path, h5=model(pixels, training=False), saved_model=outputs["probabilities"],
         h5_classes=h5_classes, saved_model_classes=outputs["classes"].numpy().astype(str))
"""


def small_config(dataset_dir: Path, tmp_path: Path, **overrides) -> Config:
    """Two epochs at 32 px, in float32 (exports compute in float32, so in-memory and reloaded
    answers compare like with like even where --mixed_precision=auto picks bfloat16)."""
    settings = dict(data_dir=str(dataset_dir), weights="none", image_size=32, batch_size=8,
                    epochs=2, rotation=0.1, mixed_precision="float32",
                    run_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"), seed=7,
                    publish="never")
    return Config(**{**settings, **overrides})


def validation_pixels(dataset_dir: Path, image_size: int) -> np.ndarray:
    from catdog import data

    _, validation = data.find_splits(dataset_dir, 0.0, seed=0)
    return np.concatenate([images.numpy() for images, _ in data.batches(
        data.decoded_images(validation, image_size), 64)])


@pytest.mark.slow
def test_a_test_time_flip_run_passes_its_gate_and_its_exports_flip(dataset_dir, tmp_path):
    """--test_time_flip: infra validation compares the flipping graph with the in-process model
    flipping too, so the candidate is published; both exports record it and answer so."""
    from catdog import inference, publish

    config = small_config(dataset_dir, tmp_path, epochs=1, test_time_flip=True,
                          publish="always")
    result = train.train(config)
    assert result.decision.outcome == publish.PUBLISHED, result.decision.reason
    pixels = validation_pixels(dataset_dir, config.image_size)
    expected = (result.model(pixels, training=False).numpy()
                + result.model(pixels[:, :, ::-1].copy(), training=False).numpy()) / 2
    for path in (result.exports.h5, result.exports.saved_model):
        assert inference.flips(path)
        np.testing.assert_allclose(inference.load_classifier(path).predict(pixels), expected,
                                   atol=1e-5)


@pytest.mark.slow
def test_training_exports_models_that_reload_in_a_fresh_process(dataset_dir, tmp_path):
    (dataset_dir / "train" / "cats" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    config = small_config(dataset_dir, tmp_path)
    result = train.train(config)

    pixels = validation_pixels(dataset_dir, config.image_size)
    np.save(tmp_path / "pixels.npy", pixels)
    run_python(RELOAD_EXPORTS, str(result.exports.h5), str(result.exports.saved_model),
               str(tmp_path / "pixels.npy"), str(tmp_path / "out.npz"))
    reloaded = np.load(tmp_path / "out.npz")
    in_memory = result.model(pixels, training=False).numpy()
    np.testing.assert_allclose(reloaded["h5"], in_memory, atol=1e-5)
    np.testing.assert_allclose(reloaded["saved_model"], in_memory, atol=1e-5)
    assert list(reloaded["h5_classes"]) == ["cats", "dogs"]
    assert list(reloaded["saved_model_classes"]) == [
        ["cats", "dogs"][i] for i in in_memory.argmax(axis=1)]

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["flags"] == config.to_dict()
    assert summary["class_names"] == ["cats", "dogs"]
    assert [row["epoch"] for row in summary["epochs"]] == [1, 2]
    val_accuracy = [row["val_accuracy"] for row in summary["epochs"]]
    assert summary["best_epoch"] == 1 + int(np.argmax(val_accuracy))
    assert summary["best_val_accuracy"] == max(val_accuracy)
    assert summary["bad_images_skipped"] == 1
    assert summary["bad_images"][0]["path"].endswith("broken.jpg")
    assert summary["train_images"] == 32 and summary["train_images_per_second"] > 0
    assert summary["exports"] == {"h5": str(result.exports.h5),
                                  "saved_model": str(result.exports.saved_model)}
    run_files = {p.name for p in (tmp_path / "run").iterdir()}
    assert run_files == {"checkpoints", "config.json", "logs", "metrics.csv", "summary.json",
                         "tensorboard", "checked_images.json", ".lock",
                         "selection_answers.npz"}
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in (tmp_path / "run" / "tensorboard").iterdir()) == [
        "train", "validation"]
    for split in ("train", "validation"):  # one run per split: curves share a chart by tag
        (events,) = (tmp_path / "run" / "tensorboard" / split).iterdir()
        tags = {value.tag for event in tf.compat.v1.train.summary_iterator(str(events))
                for value in event.summary.value}
        assert {"loss", "accuracy"} <= tags
    log = (tmp_path / "run" / "logs" / "train.log").read_text()
    assert "Epoch 2/2" in log and "exported " in log
    assert "] strategy default, 1 replica, float32 (" in log  # the start line, readable
    assert len([line for line in log.splitlines() if "] epoch " in line and "val_accuracy" in line
                ]) == 2  # one line per epoch with its metrics

    # Exported weights are the best epoch's: its validation accuracy is what the export scores.
    labels = np.array([0] * 6 + [1] * 6)
    assert (in_memory.argmax(axis=1) == labels).mean() == pytest.approx(
        summary["best_val_accuracy"])

    # Started again after a kill between its export and its summary (a finished run with its
    # summary: test_a_finished_run_started_again_...), it trains nothing and writes no
    # identical second candidate.
    (tmp_path / "run" / "summary.json").unlink()
    again = train.train(config)
    assert again.summary["epochs"] == summary["epochs"]
    assert again.exports.saved_model.name == "1"
    assert sorted(p.name for p in result.exports.saved_model.parent.iterdir()) == ["1", "1.h5"]


def run_lines_until(args: list[str], marker: str, stdout_path: Path) -> subprocess.Popen:
    """Starts `python -m catdog.train args` and returns once `marker` appears in its log."""
    with open(stdout_path, "w") as stdout:
        process = subprocess.Popen([sys.executable, "-m", "catdog.train", *args], stdout=stdout,
                                   stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if marker in line:
            return process
    raise AssertionError(f"the run ended without logging {marker!r}")


def kill_and_resume(tmp_path: Path, flags: list[str], kill_at_epoch: int, epochs: int):
    """Trains once uninterrupted, and once killed when epoch `kill_at_epoch` starts then started
    again; returns (uninterrupted summary, resumed summary, the resumed run's log)."""
    flagfile = tmp_path / "run.flags"
    # float32 stated: `auto` measures bfloat16's speed at start-up, and both runs must compute
    # alike whatever the machine's load made of that measurement.
    flagfile.write_text("\n".join([*flags, "--mixed_precision=float32", "--publish=never"]))

    def flags_for(name):
        return [f"--flagfile={flagfile}", f"--run_dir={tmp_path / name}",
                f"--export_dir={tmp_path / name / 'export'}"]

    uninterrupted = run_catdog("train", *flags_for("whole"))
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    process = run_lines_until(flags_for("killed"), f"Epoch {kill_at_epoch}/{epochs}",
                              tmp_path / "stdout.txt")
    process.kill()
    process.wait()
    assert tf.train.latest_checkpoint(tmp_path / "killed" / "checkpoints").endswith(
        f"ckpt-{kill_at_epoch - 1}")
    assert not (tmp_path / "killed" / "summary.json").exists()

    resumed = run_catdog("train", *flags_for("killed"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {kill_at_epoch - 1}" in resumed.stderr
    assert f"Epoch {kill_at_epoch - 1}/{epochs}" not in resumed.stderr
    assert f"Epoch {kill_at_epoch}/{epochs}" in resumed.stderr

    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    killed = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert [row["epoch"] for row in killed["epochs"]] == list(range(1, epochs + 1))
    for a, b in zip(whole["epochs"], killed["epochs"]):
        for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[metric] == pytest.approx(b[metric], abs=1e-4), (a["epoch"], metric)
    assert killed["best_epoch"] == whole["best_epoch"]
    # Every epoch's answers on the selection photos are kept, the resumed run's as the whole's,
    # and they are the answers behind each epoch's val_accuracy.
    with np.load(tmp_path / "whole" / "selection_answers.npz") as a, \
            np.load(tmp_path / "killed" / "selection_answers.npz") as b:
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-4)
        accuracies = (b["probabilities"].argmax(-1) == b["labels"]).mean(-1)
        assert list(accuracies) == pytest.approx([row["val_accuracy"]
                                                  for row in killed["epochs"]], abs=1e-6)
    return whole, killed


@pytest.mark.slow
def test_a_killed_run_resumes_after_its_last_finished_epoch(dataset_dir, tmp_path):
    kill_and_resume(tmp_path, [
        f"--data_dir={dataset_dir}", "--weights=none", "--image_size=32", "--batch_size=8",
        "--epochs=3", "--rotation=0.1", "--zoom=0.2", "--seed=3"], kill_at_epoch=2, epochs=3)


@pytest.mark.slow  # three training runs
def test_fine_tuning_resumes_mid_phase_and_matches_an_uninterrupted_run(dataset_dir, tmp_path):
    _, resumed = kill_and_resume(tmp_path, [
        f"--data_dir={dataset_dir}", "--weights=none", "--image_size=32", "--batch_size=8",
        "--epochs=1", "--fine_tune_from=block5_conv1", "--fine_tune_epochs=2", "--flip=none",
        "--zoom=0", "--cache_features", "--seed=4", "--schedule=cosine", "--weight_decay=0.01",
        "--ema=0.9", "--fine_tune_ema=0.9", "--fine_tune_schedule=cosine", "--mixup=0.4",
        "--fine_tune_warmup_epochs=0.5"],
        kill_at_epoch=3, epochs=3)
    assert [row["phase"] for row in resumed["epochs"]] == ["head", "fine_tune", "fine_tune"]


# --- interrupted and repeated runs --------------------------------------------------------------

@pytest.mark.slow  # a training run, then the CLI twice
def test_a_finished_run_started_again_does_nothing_and_says_so_in_one_line(
        dataset_dir_module, tmp_path, monkeypatch):
    args = [f"--data_dir={dataset_dir_module}", "--weights=none", "--image_size=32",
            "--batch_size=8", "--epochs=1", "--flip=none", "--zoom=0", "--cache_features",
            "--publish=never", f"--run_dir={tmp_path / 'run'}",
            f"--export_dir={tmp_path / 'export'}"]
    first = run_catdog("train", *args)
    assert first.returncode == 0, first.stderr
    again = run_catdog("train", *args)
    assert again.returncode == 0 and again.stdout.count("\n") == 1
    assert "features" not in again.stderr and "Epoch" not in again.stderr
    assert "had finished all 1 epochs with these flags, so nothing was decoded" in again.stdout
    assert "kept candidate" in again.stdout
    # In-process: no image is checked or decoded, VGG16 is neither built nor run.
    from catdog import data, feature_cache
    from catdog import model as model_lib

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished run did work again")

    for module, name in ((data, "check_images"), (data, "decoded_images"),
                         (feature_cache, "compute_features"), (model_lib, "build_base")):
        monkeypatch.setattr(module, name, forbidden)
    config = fast_config(dataset_dir_module, tmp_path, epochs=1, flip="none", zoom=0.0,
                         seed=42, batch_size=8)
    result = train.train(config)
    assert result.finished_before and result.summary["best_epoch"] == 1
    # Other flags (one more epoch) are not "finished": that start trains again.
    monkeypatch.undo()
    more = run_catdog("train", *args[:4], "--epochs=2", *args[5:])
    assert more.returncode == 0 and "resuming" in more.stderr and "had finished" not in more.stdout


@pytest.mark.slow
def test_a_second_run_on_a_live_run_folder_is_refused_in_one_line(dataset_dir_module, tmp_path):
    args = [sys.executable, "-m", "catdog.train", f"--data_dir={dataset_dir_module}",
            "--weights=none", "--image_size=32", "--batch_size=4", "--epochs=50", "--zoom=0",
            "--mixed_precision=float32", "--publish=never", f"--run_dir={tmp_path / 'run'}",
            f"--export_dir={tmp_path / 'export'}"]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:
            if "Epoch 1/50" in line:
                break
        second = run_catdog("train", *args[3:])
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1] == (
        f"error: the run folder {tmp_path / 'run'} is in use by process {first.pid} (it holds "
        f"{tmp_path / 'run' / '.lock'}); wait for it to finish, then run this again")
    rows = (tmp_path / "run" / "metrics.csv")
    assert not rows.exists() or len(set(rows.read_text().splitlines())) == len(
        rows.read_text().splitlines())  # nothing written twice
    from catdog import atomic
    with atomic.exclusive(tmp_path / "run" / ".lock", "the run folder"):
        pass  # SIGKILL left no stale lock


def test_weights_are_checked_before_the_data(tmp_path):
    not_weights = tmp_path / "weights.h5"
    not_weights.write_text("not an HDF5 file")
    config = Config(data_dir=str(tmp_path / "missing"), weights=str(not_weights), image_size=32,
                    run_dir=str(tmp_path / "run"))
    with pytest.raises(CatdogError, match=f"^--weights={not_weights} is not a VGG16"):
        train.train(config)


TRAINING_POINTS = [p for p in faults.POINTS if p.startswith(("train.", "checkpoints.", "export."))]


@pytest.mark.slow
def test_sigkill_at_each_crash_point_then_at_a_random_moment_and_the_rerun_finishes_cleanly(
        dataset_dir_module, tmp_path):
    """The same command killed at each crash point of training and export once, in the order a
    run reaches them, each start resuming what the last left; then once at a seeded random
    moment (a check that the points are all there is). The last start ends with every epoch,
    one version and no temporaries."""
    args = [sys.executable, "-m", "catdog.train", f"--data_dir={dataset_dir_module}",
            "--weights=none", "--image_size=32", "--batch_size=8", "--epochs=2", "--flip=none",
            "--rotation=0", "--zoom=0", "--cache_features", f"--run_dir={tmp_path / 'run'}",
            f"--export_dir={tmp_path / 'export'}"]

    def start(point: str = "", seconds: float = 600) -> tuple[int, float]:
        began = time.perf_counter()
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env={**os.environ, faults.CRASH_AT: point})
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
        return process.wait(), time.perf_counter() - began

    longest = 0.0
    for point in TRAINING_POINTS:
        status, seconds = start(point)
        assert status == -signal.SIGKILL, f"{point} was not reached"
        longest = max(longest, seconds)
    start(seconds=random.Random(0).uniform(0, longest))
    status, _ = start()
    assert status == 0
    metrics = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in metrics[1:]] == ["1", "2"]
    assert [p.name for p in (tmp_path / "export" / "catdog").iterdir()] == ["1"]
    assert not leftovers(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_cleanly_in_one_line_and_the_rerun_resumes(
        dataset_dir_module, tmp_path, signum):
    # Epochs on images (not cached features, whose epochs last milliseconds) of a few seconds
    # each, sent when epoch 2 of 5 starts: the signal lands while the run trains, and the rerun
    # has at most four epochs to go.
    args = [sys.executable, "-m", "catdog.train", f"--data_dir={dataset_dir_module}",
            "--weights=none", "--image_size=32", "--batch_size=4", "--epochs=5", "--flip=none",
            "--rotation=0.1", "--zoom=0", "--mixed_precision=float32", "--publish=never",
            f"--run_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}"]
    # A test run started in the background (`pytest &`) inherits SIGINT ignored, and Python
    # keeps an ignored SIGINT ignored: the run gets Ctrl-C's default, as from a terminal.
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                           signal.SIG_DFL))
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "Epoch 2/5" in line:
            process.send_signal(signum)
            break
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130
    assert "Traceback" not in rest
    assert re.search(r"interrupted: epoch \d+ of 5 is saved in", rest), rest
    assert "run the same command" in rest
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resuming" in again.stderr
    assert re.search(r"after epoch \d+", again.stderr)


def test_offline_the_first_error_names_both_the_weights_and_the_photos(tmp_path, monkeypatch):
    """Offline, the ImageNet weights fail first; when the photos would be the next download,
    the same line says so, so a user learns --weights and --data_dir from one error."""
    from catdog import model as model_lib

    def offline(image_size, weights):
        raise CatdogError("could not download the ImageNet VGG16 weights (no network); "
                          f"{model_lib.IMAGENET_WEIGHTS_HINT}")

    monkeypatch.setattr(model_lib, "build_base", offline)
    config = Config(data_dir=str(tmp_path / "nowhere"), weights="imagenet", download=True,
                    run_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"),
                    strategy="default")
    with pytest.raises(CatdogError) as error:
        train.train(config)
    assert "pass --weights=/path/to/that/file; --data_dir=" in str(error.value)
    assert str(error.value).endswith(
        "is not here either: --download would fetch it from "
        f"{config.download_url}, or pass --data_dir=DIR with train/ and validation/ class folders")
