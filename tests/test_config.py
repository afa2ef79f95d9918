"""Config: a Config built in code is checked exactly as the command line checks it."""

import dataclasses

import pytest
from absl import flags

from catdog import config as config_lib
from catdog import flags as catdog_flags
from catdog.config import Config
from catdog.errors import CatdogError


def test_defaults_are_the_seed_notebooks_settings():
    config = Config()
    assert (config.image_size, config.batch_size, config.epochs) == (150, 16, 10)
    assert (config.weights, config.flip, config.zoom, config.learning_rate) == (
        "imagenet", "horizontal", 0.2, 1e-3)


BAD_SETTINGS = [
    ("batch_size", 0, "must be at least 1"),
    ("epochs", -3, "must be at least 1"),
    ("image_size", 16, "must be between 32 and 1024"),
    ("learning_rate", 2.0, "must be between 1e-09 and 1"),
    ("validation_split", 0.95, "must be between 0 and 0.9"),
    ("strategy", "bogus",
     "value should be one of <auto|default|one_device|mirrored|multi_worker>"),
    ("flip", "diagonal",
     "value should be one of <horizontal|vertical|horizontal_and_vertical|none>"),
    ("mixed_precision", "float64", "value should be one of <auto|float32|mixed_float16|"),
    ("on_bad_image", "ignore", "value should be one of <skip|fail>"),
    ("weights", "/no/such/weights.h5", "must be 'imagenet', 'none' or the path of an existing"),
    ("model_name", "a/b", "must be letters, digits, '_', '.' or '-'"),
    ("download_sha256", "abc", "must be 64 lowercase hex digits, or empty"),
    ("fine_tune_from", "block9_conv1", "must be empty or a VGG16 layer name: block1_conv1"),
    ("run_dir", "", "must not be empty"),
]


@pytest.mark.parametrize("name, value, problem", BAD_SETTINGS)
def test_bad_setting_in_code_is_refused_naming_it(name, value, problem):
    with pytest.raises(CatdogError) as error:
        Config(data_dir="x", **{name: value})
    assert str(error.value).startswith(f"Config({name}={value!r}): {problem}")


@pytest.mark.parametrize("name, value, problem", BAD_SETTINGS)
def test_the_command_line_refuses_the_same_values_in_the_same_words(name, value, problem):
    fv = flags.FlagValues()
    catdog_flags.define_train_flags(fv)
    with pytest.raises(flags.IllegalFlagValueError) as error:
        fv(["prog", f"--{name}={value}"])
    assert f"flag --{name}={value}: {problem}" in str(error.value)


@pytest.mark.parametrize("name, value, expected", [
    ("batch_size", "16", "must be an integer"),
    ("batch_size", True, "must be an integer"),
    ("learning_rate", "0.1", "must be a number"),
    ("cache_features", 1, "must be True or False"),
    ("devices", ["/gpu:0"], "must be a tuple of strings"),
])
def test_wrong_types_are_refused(name, value, expected):
    with pytest.raises(CatdogError, match=expected):
        Config(**{name: value})


def test_cache_features_with_augmentation_needs_feature_views_in_code_and_on_the_command_line():
    with pytest.raises(CatdogError, match=r"Config\(cache_features=True, feature_views=1, "
                                          r"flip='horizontal'.*\): cache_features with "
                                          r"augmentation on needs feature_views of 2 or more"):
        Config(cache_features=True, feature_views=1)
    assert Config(cache_features=True, flip="none", rotation=0.0, zoom=0.0).views == 1
    assert Config(cache_features=True, feature_views=3).views == 3
    assert Config(cache_features=True).views == config_lib.DEFAULT_FEATURE_VIEWS
    assert Config().views == 1  # no cache: images through the whole model
    fv = flags.FlagValues()
    catdog_flags.define_train_flags(fv)
    with pytest.raises(flags.IllegalFlagValueError, match="needs feature_views of 2 or more"):
        fv(["prog", "--cache_features", "--zoom=0", "--feature_views=1"])


@pytest.mark.parametrize("settings", [dict(feature_views=3),
                                      dict(feature_views=3, cache_features=True, flip="none",
                                           zoom=0.0)])
def test_feature_views_need_cache_features_and_augmentation(settings):
    with pytest.raises(CatdogError, match="feature_views above 1 needs cache_features and "
                                          "augmentation on"):
        Config(**settings)


def test_a_config_is_frozen_and_a_changed_copy_is_checked_again():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 0
    with pytest.raises(CatdogError, match="batch_size=0"):
        dataclasses.replace(config, batch_size=0)


def test_resuming_may_change_where_and_how_long_but_not_what_is_learned():
    config = Config()
    saved = config.to_dict()
    for name, value in [("epochs", 20), ("export_dir", "elsewhere"), ("strategy", "mirrored"),
                        ("export_precision", "compute"),
                        ("cache_features", not config.cache_features)]:
        assert config.changes_that_break_resume({**saved, name: value}) == {}
    for name, value in [("batch_size", 32), ("learning_rate", 0.1), ("image_size", 64),
                        ("weights", "none"), ("seed", 1), ("flip", "none"),
                        ("feature_views", 4), ("mixed_precision", "float32")]:
        changed = config.changes_that_break_resume({**saved, name: value})
        assert changed == {name: (value, getattr(config, name))}


def test_every_setting_has_help_and_a_help_group():
    for name, field in config_lib.fields().items():
        assert field.metadata["help"].endswith("."), name
        assert field.metadata["group"] in config_lib.HELP_GROUPS, name
