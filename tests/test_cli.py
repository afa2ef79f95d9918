"""catdog.cli: the shell of every command: one error line, catdog's own log lines on screen."""

import os
import subprocess
import sys

import pytest

from catdog.commands import COMMANDS

from conftest import run_catdog


@pytest.mark.slow
def test_a_verbose_run_shows_tensorflows_and_keras_lines(dataset_dir, tmp_path):
    """--verbosity=1 brings back what a run hides (the quiet run's screen:
    tests/test_startup.py's quickstart run)."""
    verbose = run_catdog(
        "train", f"--data_dir={dataset_dir}", "--weights=none", "--image_size=32",
        "--batch_size=8", "--epochs=1", "--flip=none", "--rotation=0", "--zoom=0",
        "--cache_features", "--publish=never", f"--export_dir={tmp_path / 'export'}",
        f"--run_dir={tmp_path / 'verbose'}", "--verbosity=1")
    assert verbose.returncode == 0 and "saving_api.py" in verbose.stderr


@pytest.mark.slow
def test_an_error_is_printed_once(tmp_path):
    result = run_catdog("predict", f"--model={tmp_path}", str(tmp_path))
    assert result.returncode != 0
    assert len([line for line in result.stderr.splitlines() if "saved_model.pb" in line]) == 1


def _without_tf_log_setting(*args: str, level: str | None = None
                            ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    return subprocess.run([sys.executable, "-m", "catdog.data", *args], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.slow
def test_tensorflows_start_up_lines_are_hidden_unless_verbose(dataset_dir):
    quiet = _without_tf_log_setting("check", str(dataset_dir))
    assert quiet.returncode == 0
    for noise in ("oneDNN", "cudart", "cuInit", "InitializeLog", "cpu_feature_guard"):
        assert noise not in quiet.stderr, noise
    assert "checking 44 files" in quiet.stderr
    bad_flag = _without_tf_log_setting("check", str(dataset_dir), "--max_image_pixels=0")
    assert bad_flag.stderr.splitlines() == [
        "error: flag --max_image_pixels=0: must be at least 1 (--help lists the flags)"]
    assert bad_flag.returncode == 2
    verbose = _without_tf_log_setting("check", str(dataset_dir), "--verbosity=1")
    assert len(verbose.stderr.splitlines()) > len(quiet.stderr.splitlines())
    # The usual advice for quieting TensorFlow never makes a command noisier (2, the other
    # usual value, is what a catdog command sets when nothing is set: the quiet run above).
    advised = _without_tf_log_setting("check", str(dataset_dir), level="3")
    assert [line.split("]")[-1] for line in advised.stderr.splitlines()] == [
        line.split("]")[-1] for line in quiet.stderr.splitlines()]  # times aside
    asked = _without_tf_log_setting("check", str(dataset_dir), level="0")
    assert len(asked.stderr.splitlines()) > len(quiet.stderr.splitlines())


def test_shipped_flagfiles_work_from_any_folder(tmp_path):
    """`--flagfile=configs/multigpu.flags` from another folder: it and the seed flagfile it
    includes are read from the catdog checkout."""
    from catdog import cli

    argv = cli.expand_flagfiles(["--flagfile=configs/multigpu.flags", "--epochs=3"], tmp_path)
    assert "--strategy=mirrored" in argv and "--image_size=150" in argv  # seed.flags, nested
    assert argv[-1] == "--epochs=3"  # the command line still overrides
    assert argv.index("--batch_size=16") < argv.index("--batch_size=64")  # multigpu's wins
    own = tmp_path / "configs" / "multigpu.flags"
    own.parent.mkdir()
    own.write_text("--epochs=9\n")  # a file in the current folder comes first
    assert cli.expand_flagfiles(["--flagfile=configs/multigpu.flags"], tmp_path) == ["--epochs=9"]


@pytest.mark.slow
def test_help_lists_catdogs_flags_grouped_with_defaults():
    result = subprocess.run([sys.executable, "-m", "catdog.train", "--help"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0
    out = result.stdout
    assert out.startswith("usage: python -m catdog.train")
    headers = [line for line in out.splitlines() if line.endswith(":") and not line[0].isspace()]
    assert headers == ["data:", "model:", "training:", "scale:", "export:"]
    assert "  --batch_size: " in out and "(default: '16')" in out
    assert "--helpfull" in out and "--tf_" not in out  # catdog's flags only


@pytest.mark.slow
def test_predict_help_shows_its_image_arguments_and_data_help_its_three_verbs():
    predict = run_catdog("predict", "--help")
    assert predict.stdout.startswith("usage: python -m catdog.predict --model=PATH "
                                     "[--flag=value ...] IMAGE_OR_FOLDER...")
    data = run_catdog("data", "--help").stdout
    assert data.startswith("usage: python -m catdog.data check [DIR] | download | prepare")
    headers = [line.split(":")[0] for line in data.splitlines()
               if line.endswith(":") and not line.startswith(" ")]
    assert headers == ["check [DIR]", "download", "prepare"]
    assert "--epochs" not in data and "--shard_images" in data  # only the verbs' flags


@pytest.mark.slow  # seven fresh interpreters, most importing TensorFlow
@pytest.mark.parametrize("tool", ["train", "evaluate", "predict", "publish", "client", "data",
                                  "data_service"])
def test_every_tool_and_the_package_print_the_installed_version(tool):
    # (serve prints TF Serving's two --version lines instead: tests/serving/test_server.py)
    from importlib.metadata import version

    result = run_catdog(tool, "--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"catdog {version('catdog')} (Python ")
    package = subprocess.run([sys.executable, "-m", "catdog", "--version"], capture_output=True,
                             text=True, timeout=60)
    assert package.stdout == result.stdout


def test_absls_wording_becomes_a_line_naming_the_mistake(tmp_path, capsys):
    from absl import flags

    from catdog import cli

    flag_values = flags.FlagValues()
    flags.DEFINE_string("model", None, "A model.", flag_values=flag_values)
    flags.DEFINE_string("base", "", "A base path.", flag_values=flag_values)
    flags.mark_flag_as_required("model", flag_values=flag_values)
    flags.register_multi_flags_validator(
        ["model", "base"], lambda v: v["base"] != "bad",
        "--base must be a folder of versions", flag_values=flag_values)
    for argv, line in (
            ([], "error: --model is required (--help lists the flags)"),
            ([f"--flagfile={tmp_path / 'nope.flags'}"],
             f"error: cannot read the flagfile {tmp_path / 'nope.flags'}: No such file or "
             "directory (--help lists the flags)"),
            (["--model=m", "--base=bad"],
             "error: --base must be a folder of versions (--help lists the flags)")):
        with pytest.raises(SystemExit):
            cli.parse_flags_or_exit(["tool", *argv], flag_values)
        assert capsys.readouterr().err.splitlines() == [line]
        flag_values.unparse_flags()


@pytest.mark.parametrize("arg, line", [
    ("--batch_size=0", "error: flag --batch_size=0: must be at least 1 (--help lists the flags)"),
    ("--epochs=abc", "error: flag --epochs=abc: must be an integer (--help lists the flags)"),
    ("--learning_rate=x", "error: flag --learning_rate=x: must be a number (--help lists the "
                          "flags)"),
    ("--batch_siz=3", "error: Unknown command line flag 'batch_siz'. Did you mean: batch_size ? "
                      "(--help lists the flags)"),
])
def test_a_bad_flag_is_one_line_and_exit_status_2(arg, line, capsys):
    from absl import flags

    from catdog import cli
    from catdog import flags as catdog_flags

    flag_values = flags.FlagValues()
    catdog_flags.define_train_flags(flag_values)
    with pytest.raises(SystemExit) as exit_:
        cli.parse_flags_or_exit(["train", arg], flag_values)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [line]


@pytest.mark.slow
def test_a_terminal_shows_each_epochs_metrics_once(dataset_dir, tmp_path):
    """In a pseudo-terminal, the progress line is redrawn while an epoch runs and erased before
    the epoch's one line of metrics; what stays on the screen has no bar."""
    import pty

    from test_terminal import screen

    controller, terminal = pty.openpty()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "catdog.train", f"--data_dir={dataset_dir}", "--weights=none",
         "--image_size=32", "--batch_size=4", "--epochs=2", "--flip=none", "--zoom=0",
         "--publish=never", f"--run_dir={tmp_path / 'run'}",
         f"--export_dir={tmp_path / 'export'}"],
        stdin=terminal, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the process has ended
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=600) == 0
    text = output.decode("utf-8", "replace").replace("\r\n", "\n")
    assert "steps  loss " in text  # the progress line was drawn
    shown = screen(text)
    metric_lines = [line for line in shown if "val_loss" in line]
    assert len(metric_lines) == 2 and metric_lines[0].split("] ")[-1].startswith("epoch 1: loss")
    assert not [line for line in shown if "steps  loss" in line or "━" in line]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_and_a_bad_flag_answer_before_tensorflow_is_imported(command):
    """--help and a mistyped flag are answered from catdog/commands.py before any module
    imports TensorFlow (a tenth of a second here, against 5-10 s for TensorFlow's import)."""
    for args, status in ((["--help"], 0), (["--no_such_flag=1"], 2)):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"catdog.{command}",
                                 *args], capture_output=True, text=True, timeout=120)
        imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                    if line.startswith("import time:")]
        assert result.returncode == status, result.stderr[-1000:]
        assert "tensorflow" not in imported and "keras" not in imported, (command, args)
        if status:
            (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            assert line.startswith("error: Unknown command line flag 'no_such_flag'")
        else:
            assert result.stdout.startswith(f"usage: python -m catdog.{command} ")
