"""Flags: defaults match the seed, every bad value is refused with a message naming the flag."""


import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

from catdog import flags as catdog_flags

from conftest import run_catdog


def parse(*args: str) -> flags.FlagValues:
    fv = flags.FlagValues()
    catdog_flags.define_train_flags(fv)
    fv(["prog", *args])
    return fv


def test_defaults_are_the_seed_notebooks_settings():
    config = catdog_flags.config_from_flags(parse())
    assert (config.image_size, config.batch_size, config.epochs) == (150, 16, 10)
    assert (config.weights, config.flip, config.zoom) == ("imagenet", "horizontal", 0.2)
    assert config.learning_rate == 1e-3


@pytest.mark.parametrize("arg, message", [
    ("--batch_size=0", "flag --batch_size=0: must be at least 1"),
    ("--epochs=0", "flag --epochs=0: must be at least 1"),
    ("--image_size=16", "flag --image_size=16: must be between 32 and 1024"),
    ("--learning_rate=0", "flag --learning_rate=0"),
    ("--validation_split=0.95", "flag --validation_split=0.95"),
    ("--flip=up", "flag --flip=up: value should be one of <horizontal|vertical|"),
    ("--feature_views=1 --cache_features", "augmentation on needs feature_views of 2"),
    ("--rotation=-0.1", "flag --rotation=-0.1"),
    ("--zoom=1.5", "flag --zoom=1.5"),
    ("--seed=-1", "flag --seed=-1"),
    ("--on_bad_image=ignore", "flag --on_bad_image=ignore: value should be one of <skip|fail>"),
    ("--weights=/no/such/weights.h5",
     "flag --weights=/no/such/weights.h5: must be 'imagenet', 'none' or the path of an existing"),
    ("--model_name=a/b", "flag --model_name=a/b: must be letters, digits"),
    ("--download_sha256=abc", "flag --download_sha256=abc: must be 64 lowercase hex digits"),
    ("--run_dir=", "flag --run_dir=: must not be empty"),
])
def test_bad_value_is_refused_naming_the_flag(arg, message):
    with pytest.raises(flags.IllegalFlagValueError) as error:
        parse(*arg.split())
    assert message in str(error.value)


def test_command_line_overrides_flagfile(tmp_path):
    flagfile = tmp_path / "run.flags"
    flagfile.write_text("--epochs=7\n--batch_size=8\n")
    config = catdog_flags.config_from_flags(parse(f"--flagfile={flagfile}", "--epochs=2"))
    assert (config.epochs, config.batch_size) == (2, 8)


def test_shipped_flagfiles_parse():
    for name in ("quickstart", "seed", "multigpu", "multiworker", "best"):
        parse(f"--flagfile=configs/{name}.flags")


def test_the_flagfiles_the_readmes_train_and_serve_publish_under_catdog():
    """docs/serving.md trains with best.flags (README.md with quickstart.flags) and serves
    --model_name=catdog --model_base_path=export/catdog: that is where their models go."""
    for name in ("quickstart", "best"):
        config = catdog_flags.config_from_flags(parse(f"--flagfile=configs/{name}.flags"))
        assert (config.model_name, config.export_dir) == ("catdog", "export"), name


def test_seed_flagfile_keeps_the_seed_settings():
    config = catdog_flags.config_from_flags(parse("--flagfile=configs/seed.flags"))
    assert (config.image_size, config.batch_size, config.epochs) == (150, 16, 10)
    assert (config.weights, config.flip, config.zoom, config.rotation) == (
        "imagenet", "horizontal", 0.2, 0.0)


@pytest.mark.slow  # the command's wiring; the parse itself: test_cli.py, in-process
def test_cli_stops_before_any_work_on_a_bad_flag(tmp_path):
    result = run_catdog("train", "--batch_size=0", f"--run_dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "flag --batch_size=0: must be at least 1" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("tool, flag", [("train", "--data_dir"), ("serve", "--model_base_path"),
                                        ("client", "--server"), ("evaluate", "--model"),
                                        ("predict", "--model"), ("data", "--data_dir"),
                                        ("data-service", "--dispatcher")])
def test_console_scripts_are_installed_beside_python_m(tool, flag):
    """`catdog-<tool>` runs the same entry point as `python -m catdog.<tool>`."""
    import shutil

    script = shutil.which(f"catdog-{tool}", path=str(Path(sys.executable).parent))
    assert script, f"catdog-{tool} is not installed next to {sys.executable}"
    result = subprocess.run([script, "--helpfull"], capture_output=True, text=True, timeout=300)
    assert "USAGE" in result.stdout and f"{flag}:" in result.stdout


def test_docs_flags_md_is_the_generated_reference_and_names_every_training_setting():
    """docs/flags.md is what `python -m catdog --flags_reference` prints today (regenerate it
    with that command when a flag changes), and every Config field is a train flag there."""
    import re

    from catdog import cli, fields
    from catdog.config import Config

    text = (Path(__file__).resolve().parents[1] / "docs" / "flags.md").read_text()
    assert text == cli.flags_reference(), "docs/flags.md is stale: python -m catdog " \
        "--flags_reference > docs/flags.md"
    train = text[text.index("## `python -m catdog.train`"):text.index("## `python -m catdog.eval")]
    assert set(fields.fields(Config)) <= set(re.findall(r"^\| `--(\w+)`", train, re.M))
