"""catdog.startup: every command starts quietly, and serve without oneDNN, however Python found
the package."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import catdog

CLONE = Path(catdog.__file__).resolve().parents[1]
TENSORFLOW_NOISE = ("oneDNN", "cudart", "cuInit", "InitializeLog", "cpu_feature_guard", "absl::")


def _from_the_clones_parent(tmp_path: Path, *args: str, env: dict[str, str] | None = None
                            ) -> subprocess.CompletedProcess:
    """`python -m catdog.<args>` (or `python -c ...`) run from a folder holding the clone under
    the name `catdog`, where Python finds the clone itself as a namespace package `catdog` too
    (the installed package must win: pyproject.toml's package-dir)."""
    (tmp_path / "catdog").symlink_to(CLONE, target_is_directory=True)
    base = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    command = list(args) if args[0] == "-c" else ["-m", *args]
    return subprocess.run([sys.executable, *command], cwd=tmp_path, capture_output=True,
                          text=True, env={**base, **(env or {})}, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("level", [None, "2"])
def test_help_from_the_clones_parent_folder_shows_no_tensorflow_line(tmp_path, level):
    result = _from_the_clones_parent(tmp_path, "catdog.train", "--help",
                                     env={"TF_CPP_MIN_LOG_LEVEL": level} if level else {})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m catdog.train")
    assert result.stderr == ""


@pytest.mark.slow
def test_serve_runs_without_onednn_from_the_clones_parent_folder(tmp_path):
    """The guard is seen from inside the serve process: a sitecustomize module records, as the
    process exits, what TF_ENABLE_ONEDNN_OPTS TensorFlow was left with."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    record = tmp_path / "onednn.txt"
    (hooks / "sitecustomize.py").write_text(
        "import atexit, os\n"
        f"atexit.register(lambda: open({str(record)!r}, 'w').write("
        "os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')))\n")
    env = {"TF_ENABLE_ONEDNN_OPTS": "1", "PYTHONPATH": str(hooks)}
    result = _from_the_clones_parent(tmp_path, "catdog.serve", "--version", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("TensorFlow ModelServer: catdog.serve ")
    assert record.read_text() == "0"
    assert not any(noise in result.stderr for noise in TENSORFLOW_NOISE), result.stderr


def test_library_imports_from_the_clones_parent_folder(tmp_path):
    """A user's script beside the clone imports the package, not the clone's serving/ configs
    folder as `catdog.serving`."""
    result = _from_the_clones_parent(
        tmp_path, "-c", "from catdog.serving.client import Client\n"
                        "from catdog.client import Client as Shim\n"
                        "import catdog.serving, catdog.data\n"
                        "print(Client is Shim, catdog.serving.__file__, catdog.data.__file__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", str(CLONE / "catdog" / "serving" / "__init__.py"),
                                     str(CLONE / "catdog" / "data" / "__init__.py")]


def test_python_m_catdog_data_from_the_clones_parent_folder(tmp_path):
    """`python -m catdog.data` is catdog's data command there too, not the clone's data/."""
    result = _from_the_clones_parent(tmp_path, "catdog.data", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m catdog.data check")


@pytest.mark.slow
def test_version_from_the_clones_parent_folder(tmp_path):
    result = _from_the_clones_parent(tmp_path, "catdog", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"catdog {catdog.__version__} (Python ")


@pytest.mark.slow
def test_a_quickstart_run_from_the_clones_parent_folder_shows_only_catdogs_lines(
        tmp_path, dataset_dir):
    """TF_CPP_MIN_LOG_LEVEL=2, the usual advice, and the clone found as a namespace package:
    the run, its gate's validating process included, shows catdog's lines only (no TensorFlow
    or Keras line; not a terminal, so no redraws or colour) and publishes."""
    result = _from_the_clones_parent(
        tmp_path, "catdog.train", "--flagfile=configs/quickstart.flags",
        f"--data_dir={dataset_dir}", "--weights=none", "--image_size=32", "--epochs=1",
        f"--run_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}",
        f"--feature_cache_dir={tmp_path / 'features'}", env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "published" in result.stdout
    assert not any(noise in result.stderr for noise in TENSORFLOW_NOISE), result.stderr
    assert "Epoch 1/1" in result.stderr  # catdog's own progress line
    assert result.stderr.index("computing VGG16 features for 32 train images") < \
        result.stderr.index("Epoch 1/1")  # the feature pass comes first, with its own bar
    for noise in ("functional_saver", "legacy", "saving_api.py"):  # TensorFlow's and Keras'
        assert noise not in result.stderr, noise
    for stream in (result.stdout, result.stderr):
        assert "\r" not in stream and "\x1b" not in stream and "\b" not in stream
    assert result.stderr.count("val_loss") == 1  # the epoch's metrics, once


@pytest.mark.parametrize("level, noisy", [(None, False), ("0", True)])
def test_a_script_importing_the_client_and_inference_starts_tensorflow_quietly(tmp_path, level,
                                                                             noisy):
    """A user's script: TensorFlow's start-up lines (the cuInit error among them) stay off its
    screen as they do for the commands, unless the user set TF_CPP_MIN_LOG_LEVEL to see them."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    result = subprocess.run(
        [sys.executable, "-c", "from catdog.client import Client\nfrom catdog import inference\n"
                               "print('imported')"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout == "imported\n", result.stderr
    assert any(noise in result.stderr for noise in TENSORFLOW_NOISE) == noisy, result.stderr
