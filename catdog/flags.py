"""Command-line flags, defined and validated once, and turned into a `Config`.

Every flag is checked when the command line is parsed, so a bad value stops the program before any
work with one line naming the flag and what is valid. Each entry point defines the set it needs
just before parsing (`catdog.cli.run`); only `main()` functions read flags, and library code takes
the `Config` that `config_from_flags` builds, or plain values.
"""

from __future__ import annotations

import dataclasses
import os
import re

from absl import flags

from catdog import config as config_lib
from catdog import model as model_lib

FLIPS = ("horizontal", "vertical", "horizontal_and_vertical", "none")
MIN_IMAGE_SIZE = 32  # VGG16's five 2x2 poolings need at least 32 px.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA256 = re.compile(r"^([0-9a-f]{64})?$")


# How --help groups the training flags; every other catdog flag is listed under "options".
HELP_GROUPS = {
    "data": ("data_dir", "validation_split", "image_size", "on_bad_image", "max_image_pixels",
             "download", "download_url", "download_sha256", "cache_features",
             "feature_cache_dir"),
    "model": ("weights", "fine_tune_from"),
    "training": ("batch_size", "epochs", "learning_rate", "flip", "rotation", "zoom", "seed",
                 "fine_tune_epochs", "fine_tune_learning_rate", "run_dir"),
    "scale": ("strategy", "devices", "logical_devices", "scale_learning_rate",
              "mixed_precision", "jit_compile"),
    "export": ("export_dir", "model_name", "keep_versions"),
}


def _is_weights_spec(value: str) -> bool:
    return value in ("imagenet", "none") or os.path.isfile(value)


def define_train_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the training flags on `flag_values` (the global FLAGS unless a test passes its
    own); `python -m catdog.train` and `python -m catdog.data` use them."""
    defaults = config_lib.Config(data_dir="data/cats_and_dogs_filtered")
    fv = flag_values

    flags.DEFINE_string(
        "data_dir", defaults.data_dir,
        "Dataset folder: either train/ and validation/ each with one sub-folder per class, or the "
        "class sub-folders themselves together with --validation_split.", flag_values=fv)
    flags.DEFINE_float(
        "validation_split", defaults.validation_split,
        "Fraction of each class held out for validation when --data_dir has no validation/ "
        "folder; 0 means use validation/.", lower_bound=0.0, upper_bound=0.9, flag_values=fv)
    flags.DEFINE_integer(
        "image_size", defaults.image_size, "Side in pixels of the square images the model sees.",
        lower_bound=MIN_IMAGE_SIZE, upper_bound=1024, flag_values=fv)
    flags.DEFINE_integer(
        "batch_size", defaults.batch_size, "Global batch size (summed over all replicas).",
        lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("epochs", defaults.epochs, "Training epochs.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_float("learning_rate", defaults.learning_rate, "Adam learning rate.",
                       lower_bound=1e-9, upper_bound=1.0, flag_values=fv)
    flags.DEFINE_string(
        "weights", defaults.weights,
        "VGG16 base weights: 'imagenet' (Keras downloads them on first use), 'none' (random), "
        "or the path of a VGG16 no-top weights .h5 file.", flag_values=fv)
    define_max_image_pixels(fv, defaults.max_image_pixels)
    flags.DEFINE_enum("flip", defaults.flip, FLIPS, "RandomFlip mode in training.",
                      flag_values=fv)
    flags.DEFINE_float(
        "rotation", defaults.rotation,
        "RandomRotation factor, a fraction of a full turn; 0 disables.",
        lower_bound=0.0, upper_bound=1.0, flag_values=fv)
    flags.DEFINE_float("zoom", defaults.zoom, "RandomZoom factor; 0 disables.",
                       lower_bound=0.0, upper_bound=0.9, flag_values=fv)
    flags.DEFINE_integer("seed", defaults.seed,
                         "Seed for weights, data order and augmentation.",
                         lower_bound=0, upper_bound=2**31 - 1, flag_values=fv)
    flags.DEFINE_enum(
        "on_bad_image", defaults.on_bad_image, ("skip", "fail"),
        "What to do with files that cannot be decoded: skip them (listed in the log and "
        "summary.json) or stop before training.", flag_values=fv)
    flags.DEFINE_string(
        "run_dir", defaults.run_dir,
        "Run folder: checkpoints/, logs/, tensorboard/, metrics.csv, summary.json. Starting "
        "again with the same run_dir resumes from its last finished epoch.", flag_values=fv)
    flags.DEFINE_string(
        "export_dir", defaults.export_dir,
        "Where <model_name>.h5 and the SavedModel versions <model_name>/<N>/ are written.",
        flag_values=fv)
    flags.DEFINE_string("model_name", defaults.model_name,
                        "Name of the exported model (file and TF Serving model name).",
                        flag_values=fv)
    flags.DEFINE_integer(
        "keep_versions", defaults.keep_versions,
        "After exporting, keep only this many newest SavedModel versions; 0 keeps all.",
        lower_bound=0, flag_values=fv)
    flags.DEFINE_enum(
        "strategy", defaults.strategy, ("auto", "default", "one_device", "mirrored",
                                        "multi_worker"),
        "tf.distribute strategy; auto: mirrored when more than one GPU is visible, else "
        "default. multi_worker reads the cluster from TF_CONFIG.", flag_values=fv)
    flags.DEFINE_list("devices", list(defaults.devices),
                      "Devices for one_device/mirrored, e.g. /gpu:0,/gpu:1; empty: all GPUs "
                      "(or the logical CPUs).", flag_values=fv)
    flags.DEFINE_integer(
        "logical_devices", defaults.logical_devices,
        "Split the first CPU into this many logical devices (try distribution without GPUs); "
        "0 leaves it whole.", lower_bound=0, upper_bound=64, flag_values=fv)
    flags.DEFINE_bool("scale_learning_rate", defaults.scale_learning_rate,
                      "Multiply --learning_rate by the replica count (linear scaling).",
                      flag_values=fv)
    flags.DEFINE_enum(
        "mixed_precision", defaults.mixed_precision,
        ("auto", "float32", "mixed_float16", "mixed_bfloat16"),
        "Keras precision policy; auto: mixed_float16 on GPUs of compute capability >= 7.0, "
        "else float32.", flag_values=fv)
    flags.DEFINE_enum("jit_compile", defaults.jit_compile, ("auto", "true", "false"),
                      "XLA-compile the model step; auto: on for a single GPU only.",
                      flag_values=fv)
    flags.DEFINE_string(
        "fine_tune_from", defaults.fine_tune_from,
        "After the head epochs, unfreeze VGG16 from this layer (e.g. block5_conv1) to the top "
        "and train --fine_tune_epochs more with a fresh Adam; empty: no fine-tuning.",
        flag_values=fv)
    flags.DEFINE_integer("fine_tune_epochs", defaults.fine_tune_epochs,
                         "Epochs of the fine-tuning phase.", lower_bound=1, flag_values=fv)
    flags.DEFINE_float("fine_tune_learning_rate", defaults.fine_tune_learning_rate,
                       "Adam learning rate of the fine-tuning phase.", lower_bound=1e-12,
                       upper_bound=1.0, flag_values=fv)
    flags.DEFINE_bool(
        "cache_features", defaults.cache_features,
        "Compute the frozen base's pooled features of each image once and train the head on "
        "them (needs augmentation off); the export is the same full model.", flag_values=fv)
    flags.DEFINE_string(
        "feature_cache_dir", defaults.feature_cache_dir,
        "Keep --cache_features features on disk here, reused by later runs while weights, "
        "image size and files are unchanged; empty: in memory for this run only.",
        flag_values=fv)
    flags.DEFINE_bool(
        "download", defaults.download,
        "Download --download_url into --data_dir when --data_dir does not exist.",
        flag_values=fv)
    flags.DEFINE_string("download_url", defaults.download_url,
                        "Zip archive of the dataset for --download.", flag_values=fv)
    flags.DEFINE_string(
        "download_sha256", defaults.download_sha256,
        "Expected sha256 of the archive at --download_url; empty: not checked, the computed "
        "digest is logged so it can be pinned.", flag_values=fv)

    flags.register_validator(
        "weights", _is_weights_spec,
        message="must be 'imagenet', 'none' or the path of an existing VGG16 weights .h5 file",
        flag_values=fv)
    flags.register_validator(
        "model_name", lambda v: bool(_MODEL_NAME.match(v)),
        message="must be letters, digits, '_', '.' or '-', starting with a letter or digit",
        flag_values=fv)
    flags.register_validator(
        "download_sha256", lambda v: bool(_SHA256.match(v)),
        message="must be 64 lowercase hex digits, or empty", flag_values=fv)
    flags.register_validator(
        "fine_tune_from", lambda v: v in ("", *model_lib.VGG16_LAYERS),
        message=f"must be empty or a VGG16 layer name: {', '.join(model_lib.VGG16_LAYERS)}",
        flag_values=fv)
    flags.register_multi_flags_validator(
        ["cache_features", "flip", "rotation", "zoom"],
        lambda f: not f["cache_features"] or (
            f["flip"] == "none" and f["rotation"] == 0 and f["zoom"] == 0),
        message=config_lib.CACHE_NEEDS_NO_AUGMENTATION, flag_values=fv)
    for name in ("data_dir", "run_dir", "export_dir"):
        flags.register_validator(name, bool, message="must not be empty", flag_values=fv)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> config_lib.Config:
    """The `Config` that the parsed training flags describe."""
    names = [field.name for field in dataclasses.fields(config_lib.Config)]
    values = {name: flag_values[name].value for name in names}
    values["devices"] = tuple(values["devices"] or ())
    return config_lib.Config(**values)


def define_max_image_pixels(flag_values: flags.FlagValues, default: int) -> None:
    """--max_image_pixels, for every command that reads image files."""
    flags.DEFINE_integer(
        "max_image_pixels", default,
        "Largest width × height an image file may declare; larger ones are refused before "
        "decoding (a small file can declare gigabytes of pixels). Pillow's limit by default.",
        lower_bound=1, flag_values=flag_values)


def define_serve_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.serve`, named as TF Serving's own model server names them."""
    fv = flag_values
    flags.DEFINE_string("model_name", "catdog", "Name clients use for the model.", flag_values=fv)
    flags.DEFINE_string("model_base_path", "export/catdog",
                        "Folder holding integer-named SavedModel versions.", flag_values=fv)
    flags.DEFINE_integer("port", 8500, "gRPC port.", lower_bound=0, upper_bound=65535,
                         flag_values=fv)
    flags.DEFINE_integer("rest_api_port", 8501, "REST port; 0 turns REST off.", lower_bound=0,
                         upper_bound=65535, flag_values=fv)
    flags.DEFINE_string("host", "127.0.0.1",
                        "Address to bind; 0.0.0.0 exposes the server to the network.",
                        flag_values=fv)
    flags.DEFINE_integer("max_request_bytes", 64 << 20,
                         "Largest request accepted (gRPC message or REST body).",
                         lower_bound=1024, flag_values=fv)
    flags.DEFINE_integer("max_request_instances", 256,
                         "Most instances (batch size or tf.Examples) one request may hold.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("max_rest_connections", 64,
                         "Most REST connections served at once; more are answered 503.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("file_system_poll_wait_seconds", 1.0,
                       "How often to look for new or removed versions.", lower_bound=0.05,
                       flag_values=fv)
    flags.DEFINE_string("model_config_file", "",
                        "A ModelServerConfig text proto (several models, version policies, "
                        "version labels); replaces --model_name/--model_base_path.",
                        flag_values=fv)
    flags.DEFINE_float("model_config_file_poll_wait_seconds", 0.0,
                       "How often to re-read --model_config_file; 0 reads it once.",
                       lower_bound=0.0, flag_values=fv)
    flags.DEFINE_string("monitoring_config_file", "",
                        "A MonitoringConfig text proto; enables Prometheus metrics on the REST "
                        "port.", flag_values=fv)
    flags.DEFINE_bool("enable_batching", False,
                      "Batch concurrent Predict requests into one session run.", flag_values=fv)
    flags.DEFINE_string("batching_parameters_file", "",
                        "A BatchingParameters text proto (with --enable_batching).",
                        flag_values=fv)
    flags.DEFINE_integer("rest_api_timeout_in_ms", 0,
                         "Session run timeout of a request; 0 means none.", lower_bound=0,
                         flag_values=fv)
    flags.register_multi_flags_validator(
        ["model_base_path", "model_config_file"],
        lambda f: bool(f["model_config_file"]) or os.path.isdir(f["model_base_path"]),
        message="--model_base_path must be an existing folder of SavedModel versions "
                "(e.g. export/catdog), unless --model_config_file is given", flag_values=fv)
    for name in ("model_config_file", "monitoring_config_file", "batching_parameters_file"):
        flags.register_validator(
            name, lambda path: not path or os.path.isfile(path),
            message="must name an existing text proto file", flag_values=fv)


def define_client_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.client`."""
    fv = flag_values
    flags.DEFINE_string("server", "grpc://127.0.0.1:8500",
                        "grpc://host:port (TF Serving's --port) or http://host:port "
                        "(its --rest_api_port).", flag_values=fv)
    flags.DEFINE_string("model", "catdog", "Model name on the server.", flag_values=fv)
    flags.DEFINE_integer("model_version", 0, "Version to ask for; 0 means the newest.",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_float("timeout", 10.0, "Seconds to wait for each request.", lower_bound=0.01,
                       flag_values=fv)
    flags.DEFINE_integer("retries", 3, "Retries when the server is UNAVAILABLE.", lower_bound=0,
                         flag_values=fv)
    flags.register_validator(
        "server", lambda v: bool(re.match(r"^(grpc|https?)://[^/]+:\d+/?$", v)),
        message="must be grpc://host:port or http://host:port", flag_values=fv)


def define_evaluate_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.evaluate`."""
    fv = flag_values
    _define_model_flag(fv)
    flags.DEFINE_string("data_dir", None, "Folder with one sub-folder of images per class.",
                        flag_values=fv)
    flags.DEFINE_string("output_dir", "evaluation",
                        "Where report.json, report.md and misclassified.png are written.",
                        flag_values=fv)
    flags.DEFINE_integer("batch_size", 32, "Images per forward pass.", lower_bound=1,
                         flag_values=fv)
    flags.mark_flag_as_required("data_dir", flag_values=fv)
    flags.register_validator("data_dir", lambda v: v is None or os.path.isdir(v),
                             message="must be an existing folder with one sub-folder per class",
                             flag_values=fv)


def define_predict_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.predict`."""
    fv = flag_values
    _define_model_flag(fv)
    flags.DEFINE_enum("format", "text", ("text", "jsonl"),
                      "text: 'path<TAB>label<TAB>probability' lines; jsonl: one JSON object a line.",
                      flag_values=fv)
    flags.DEFINE_integer("batch_size", 32, "Images per forward pass.", lower_bound=1,
                         flag_values=fv)


def _define_model_flag(fv: flags.FlagValues) -> None:
    define_max_image_pixels(fv, config_lib.Config(data_dir="").max_image_pixels)
    flags.DEFINE_string("model", None,
                        "An exported model: the .h5 file or a SavedModel version folder "
                        "(export/catdog/<N>).", flag_values=fv)
    flags.mark_flag_as_required("model", flag_values=fv)
    flags.register_validator(
        "model", lambda v: v is None or os.path.isfile(v) or os.path.isfile(
            os.path.join(v, "saved_model.pb")),
        message="must be a .h5 file or a SavedModel version folder holding saved_model.pb",
        flag_values=fv)
