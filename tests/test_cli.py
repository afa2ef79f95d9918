"""catdog.cli: the shell of every command: one error line, catdog's own log lines on screen."""

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
