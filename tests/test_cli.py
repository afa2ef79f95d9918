"""catdog.cli: the shell of every command: one error line, catdog's own log lines on screen."""

import os
import subprocess
import sys

import pytest

from conftest import run_catdog


@pytest.mark.slow
def test_a_run_shows_catdogs_lines_unless_verbose(dataset_dir, tmp_path):
    args = ["train", f"--data_dir={dataset_dir}", "--weights=none", "--image_size=32",
            "--batch_size=8", "--epochs=1", "--flip=none", "--rotation=0", "--zoom=0",
            "--cache_features", f"--export_dir={tmp_path / 'export'}"]
    quiet = run_catdog(*args, f"--run_dir={tmp_path / 'quiet'}")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "Epoch 1/1" in quiet.stderr  # catdog's own progress line
    for noise in ("functional_saver", "legacy", "saving_api.py"):  # TensorFlow's and Keras'
        assert noise not in quiet.stderr, noise
    verbose = run_catdog(*args, f"--run_dir={tmp_path / 'verbose'}", "--verbosity=1")
    assert verbose.returncode == 0 and "saving_api.py" in verbose.stderr


def test_an_error_is_printed_once(tmp_path):
    result = run_catdog("predict", f"--model={tmp_path}", str(tmp_path))
    assert result.returncode != 0
    assert len([line for line in result.stderr.splitlines() if "saved_model.pb" in line]) == 1


def _without_tf_log_setting(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "catdog.data", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_tensorflows_start_up_lines_are_hidden_unless_verbose(dataset_dir):
    quiet = _without_tf_log_setting("check", str(dataset_dir))
    assert quiet.returncode == 0
    for noise in ("oneDNN", "cudart", "cuInit", "InitializeLog", "cpu_feature_guard"):
        assert noise not in quiet.stderr, noise
    assert "checking 44 files" in quiet.stderr
    bad_flag = _without_tf_log_setting("check", str(dataset_dir), "--max_image_pixels=0")
    assert bad_flag.stderr.splitlines()[0].startswith("FATAL Flags parsing error: flag "
                                                      "--max_image_pixels=0")
    verbose = _without_tf_log_setting("check", str(dataset_dir), "--verbosity=1")
    assert len(verbose.stderr.splitlines()) > len(quiet.stderr.splitlines())
