"""Command-line flags, defined and validated once, and turned into a `Config`.

Every flag is checked when the command line is parsed, so a bad value stops the program before any
work with one line naming the flag and what is valid. Each entry point defines the set it needs
just before parsing (`catdog.cli.run`); only `main()` functions read flags, and library code takes
the `Config` that `config_from_flags` builds, or plain values.
"""

from __future__ import annotations

import os
import typing

from absl import flags

from catdog import config as config_lib
from catdog import fields

# How --help groups the training flags (the groups of Config's fields); every other catdog flag
# is listed under "options".
HELP_GROUPS = {
    group: tuple(name for name, field in config_lib.fields().items()
                 if field.metadata["group"] == group)
    for group in config_lib.HELP_GROUPS}


def define_train_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one flag per `Config` field on `flag_values` (the global FLAGS unless a test
    passes its own), with the field's default, help and checks; `python -m catdog.train` and
    `python -m catdog.data` use them. Rules between flags are Config's too."""
    for name in config_lib.fields():
        fields.define_flag(config_lib.Config, name, flag_values)
    fields.register_cross_rules(config_lib.CROSS_FIELD_RULES, flag_values)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> config_lib.Config:
    """The `Config` that the parsed training flags describe."""
    return fields.from_flags(config_lib.Config, flag_values)


def define_data_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.data`: the training flags, and where `prepare` writes."""
    define_train_flags(flag_values)
    flags.DEFINE_string("output_dir", "", "prepare: the new folder of decoded shards to write.",
                        flag_values=flag_values)
    flags.DEFINE_integer("shard_images", 2048, "prepare: images per shard (at most).",
                         lower_bound=1, flag_values=flag_values)


def define_max_image_pixels(flag_values: flags.FlagValues) -> None:
    """--max_image_pixels, as training defines it, for the commands that read image files but
    do not train (evaluate, predict)."""
    fields.define_flag(config_lib.Config, "max_image_pixels", flag_values)


EVERY_INTERFACE = "0.0.0.0"  # the only address TensorFlow's data service listens on


def define_data_service_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.data_service dispatcher|worker`. Any --host but the one
    TensorFlow's servers really listen on is refused as the flags are parsed, before TensorFlow
    loads (catdog/data_service.py says why): a server reachable from everywhere must be asked
    for by name."""
    fv = flag_values
    flags.DEFINE_string("host", "127.0.0.1",
                        "Where the server may be reached. TensorFlow's data service listens on "
                        "every interface and cannot bind one address, and it has no "
                        "authentication: it starts only with --host=0.0.0.0, which says only "
                        "trainers can reach this machine's port.", flag_values=fv)
    flags.register_validator(
        "host", lambda host: host == EVERY_INTERFACE, flag_values=fv, message=(
            f"TensorFlow's data service listens on every interface ({EVERY_INTERFACE}) and "
            "cannot be bound to one address; it has no authentication and runs any dataset "
            "graph a client sends. Run it where only your trainers can reach it (a private "
            "network; deploy/data-service.yaml's NetworkPolicy) and pass "
            f"--host={EVERY_INTERFACE} to say so"))
    flags.DEFINE_integer("port", 0, "Port to listen on; 0 picks a free one.", lower_bound=0,
                         upper_bound=65535, flag_values=fv)
    flags.DEFINE_string("dispatcher", "", "worker: the dispatcher's host:port.", flag_values=fv)
    flags.DEFINE_string("worker_address", "",
                        "worker: the host:port trainers reach it at; empty: localhost:--port.",
                        flag_values=fv)
    flags.DEFINE_string("work_dir", "",
                        "dispatcher: folder of its journal, which makes it fault tolerant (a "
                        "dispatcher restarted on it resumes its jobs); made private (0700), "
                        "and the journal removed when the dispatcher ends cleanly; empty: "
                        "<tmp>/catdog-dispatcher-<port> (none with --port=0).", flag_values=fv)
    flags.DEFINE_float("worker_timeout_seconds", 10,
                       "dispatcher: a worker silent this long is dropped, with its unfinished "
                       "splits.", lower_bound=0.1, flag_values=fv)


def define_evaluate_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.evaluate`."""
    fv = flag_values
    _define_model_flag(fv)
    flags.DEFINE_string("data_dir", None, "The photos to judge: a dataset folder (its evaluation "
                        "photos: test/, else the --evaluation_split of validation/ every run "
                        "keeps apart) or a folder with one sub-folder of images per class.",
                        flag_values=fv)
    flags.DEFINE_string("output_dir", "evaluation",
                        "Where report.html, report.json, report.md and misclassified.png are "
                        "written.",
                        flag_values=fv)
    flags.DEFINE_integer("batch_size", 32, "Images per forward pass.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_string("baseline", "", "Another exported model (.h5 or SavedModel version) to "
                        "compare with on the same photos: both curves on one chart, deltas, a "
                        "paired bootstrap interval, McNemar's test, the photos they disagree "
                        "on.", flag_values=fv)
    flags.DEFINE_integer("max_explained", 64, "Misclassified photos shown with a Grad-CAM heat "
                         "map in report.html (one extra forward and backward pass each).",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("bootstrap_samples", 1000, "Resamples behind the 95% intervals.",
                         lower_bound=100, flag_values=fv)
    flags.DEFINE_bool("test_time_flip", False, "Also answer each photo mirrored left-right and "
                      "average the two answers (test-time augmentation): twice the model "
                      "time; report.json records it and the seconds the answers took.",
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
                      "text: 'path<TAB>label<TAB>probability' lines; jsonl: one JSON object a "
                      "line.",
                      flag_values=fv)
    flags.DEFINE_integer("batch_size", 32, "Images per forward pass.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_string("explain", "", "A folder to write, for each image, the Grad-CAM heat "
                        "map of the predicted class over the photo (<name>.gradcam.png).",
                        flag_values=fv)


def define_batch_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.batch`; Beam's own pipeline options follow `--`."""
    fv = flag_values
    define_max_image_pixels(fv)
    flags.DEFINE_string("model", None, "A SavedModel version folder (export/catdog/3, or "
                        "gs://…/catdog/3), or a local base path meaning its newest version "
                        "(export/catdog).", flag_values=fv)
    flags.DEFINE_string("input", None, "The photos: a folder (every image under it, "
                        "recursively) or a glob ('photos/**/*.jpg', 'gs://bucket/photos/**'); "
                        "only image files are read.", flag_values=fv)
    flags.DEFINE_string("output", None, "Prefix of the output files, e.g. out/labels → "
                        "out/labels-00000-of-00001.jsonl.", flag_values=fv)
    flags.DEFINE_enum("format", "jsonl", ("jsonl", "parquet", "tfrecord"),
                      "jsonl: predict --format=jsonl's records; parquet: the same as columns; "
                      "tfrecord: TF Serving PredictionLogs, as TFX's BulkInferrer writes them "
                      "(each embeds its image; error records go to <output>*.errors.jsonl).",
                      flag_values=fv)
    flags.DEFINE_integer("batch_size", 32, "Images per forward pass (every Beam batch).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_string("model_name", "", "The model name in PredictionLogs (default: the "
                        "base path's folder name, e.g. catdog).", flag_values=fv)
    for name in ("model", "input", "output"):
        flags.mark_flag_as_required(name, flag_values=fv)


def define_publish_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `python -m catdog.publish`; the gate's settings are Config's fields, so they
    read and check as they do for `python -m catdog.train`."""
    fv = flag_values
    flags.DEFINE_string("candidate", "", "A candidate SavedModel folder to gate and publish, "
                        "e.g. export/candidates/catdog/3 (its .h5, 3.h5, beside it).",
                        flag_values=fv)
    flags.DEFINE_string("model_base_path", None, "TF Serving's base path of the model, "
                        "e.g. export/catdog: versions are published into it.", flag_values=fv)
    flags.DEFINE_string("data_dir", "", "Photos to judge both models on: a dataset folder (its "
                        "evaluation photos) or class sub-folders; empty: the evaluation photos "
                        "of the run that made the candidate.", flag_values=fv)
    flags.DEFINE_bool("force", False, "Publish without comparing with the published version "
                      "(infra validation still runs).", flag_values=fv)
    flags.DEFINE_bool("rollback", False, "Move the newest published version back among the "
                      "candidates, so that the previous one is the newest again.",
                      flag_values=fv)
    flags.DEFINE_integer("batch_size", 32, "Images per forward pass while evaluating.",
                         lower_bound=1, flag_values=fv)
    for name in ("gate_tolerance", "gate_min_accuracy", "keep_versions", "max_image_pixels"):
        fields.define_flag(config_lib.Config, name, fv)
    flags.mark_flag_as_required("model_base_path", flag_values=fv)


def _define_model_flag(fv: flags.FlagValues) -> None:
    define_max_image_pixels(fv)
    flags.DEFINE_enum(
        "mixed_precision", config_lib.AS_EXPORTED,
        [config_lib.AS_EXPORTED, *typing.get_args(config_lib.Precision)],
        "Keras precision policy a .h5 model computes in: export (the default) is the one its "
        "export records, float32 unless it was exported otherwise, so the .h5, its SavedModel "
        "and the gate give the same figures; auto as training resolves it (bfloat16 on a CPU "
        "with native bfloat16: faster, answers about 0.01 apart). A SavedModel always computes "
        "as it was exported.", flag_values=fv)
    flags.DEFINE_string("model", None,
                        "An exported model: the .h5 file or a SavedModel version folder "
                        "(export/catdog/<N>).", flag_values=fv)
    flags.mark_flag_as_required("model", flag_values=fv)
    flags.register_validator(
        "model", lambda v: v is None or os.path.isfile(v) or os.path.isfile(
            os.path.join(v, "saved_model.pb")),
        message="must be a .h5 file or a SavedModel version folder holding saved_model.pb",
        flag_values=fv)


DATA_VERB_FLAGS = {  # `catdog.data --help` lists each verb with the flags it reads
    "check [DIR]: list the files training would skip, or verify a prepared folder's shards":
        ("data_dir", "max_image_pixels"),
    "download: fetch and unpack a dataset archive into a new --data_dir":
        ("data_dir", "download_url", "download_sha256"),
    "prepare: decode, resize and shard a dataset into a new --output_dir":
        ("data_dir", "output_dir", "image_size", "validation_split", "seed", "max_image_pixels",
         "shard_images"),
}
