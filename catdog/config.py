"""The typed, frozen settings of one training run, which check themselves when built.

Each field carries everything about one setting: its type (a `Literal` lists the choices), its
default, its bounds or rule, its help text and `--help` group, and whether a resumed run may
change it (`catdog/fields.py` holds the machinery, shared with the server's options).
`catdog/flags.py` turns these fields into absl flags and adds nothing of its own, so a `Config`
built in a test or a notebook is refused for exactly what the command line refuses:

    >>> Config(batch_size=0)
    CatdogError: Config(batch_size=0): must be at least 1

A `Config` is frozen once built (`dataclasses.replace` makes a checked copy).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Literal

from catdog import contract
from catdog import fields as fields_lib
from catdog.fields import Check, CrossRule
from catdog.image_formats import MAX_IMAGE_PIXELS

Flip = Literal["horizontal", "vertical", "horizontal_and_vertical", "none"]
Strategy = Literal["auto", "default", "one_device", "mirrored", "multi_worker"]
Precision = Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
AS_EXPORTED = "export"  # predict and evaluate: compute a .h5 as its export records
AutoBool = Literal["auto", "true", "false"]
OnBadImage = Literal["skip", "fail"]
ExportPrecision = Literal["float32", "compute", "auto"]
Publish = Literal["if_better", "always", "never"]
Schedule = Literal["constant", "cosine"]

# Google's cats_and_dogs_filtered subset of Kaggle's Dogs vs. Cats (68,606,236 bytes).
CATS_AND_DOGS_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
VGG16_LAYERS = tuple(
    f"block{block}_{kind}"
    for block, convs in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
    for kind in [f"conv{i}" for i in range(1, convs + 1)] + ["pool"])
MIN_IMAGE_SIZE = 32  # VGG16's five 2×2 poolings need at least 32 px
# --feature_views=0 with augmentation on: chosen from benchmarks/training.py's seed-job table
# (benchmarks/README.md), the smallest K within a point of the full augmented path.
DEFAULT_FEATURE_VIEWS = 2
DEFAULT_EVALUATION_SPLIT = 0.5  # also what evaluate assumes of an export that records none
HELP_GROUPS = ("data", "model", "training", "scale", "export")

_NOT_EMPTY: Check = (bool, "must not be empty")
_WEIGHTS: Check = (
    lambda v: v in ("imagenet", "none") or os.path.isfile(v),
    "must be 'imagenet', 'none' or the path of an existing VGG16 weights .h5 file")
_MODEL_NAME: Check = (
    lambda v: bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v))
    and v != contract.CANDIDATES_DIR,
    "must be letters, digits, '_', '.' or '-', starting with a letter or digit, and not "
    "'candidates' (the folder of unpublished exports)")
_SHA256: Check = (lambda v: bool(re.fullmatch(r"([0-9a-f]{64})?", v)),
                  "must be 64 lowercase hex digits, or empty")
_SERVICE: Check = (lambda v: not v or bool(re.fullmatch(r"grpc://[^/:]+:\d+", v)),
                    "must be empty or grpc://host:port (a tf.data service dispatcher)")
_LAYER: Check = (lambda v: v in ("", *VGG16_LAYERS),
                 f"must be empty or a VGG16 layer name: {', '.join(VGG16_LAYERS)}")


def _setting(default: Any, group: str, help: str, *, at_least: float | None = None,
             at_most: float | None = None, check: Check | None = None,
             resumable: bool = False) -> Any:
    """A Config field and what flags.py needs to offer it: `resumable` fields may differ when a
    run folder is resumed, since its checkpoints do not depend on them."""
    return fields_lib.setting(default, help, at_least=at_least, at_most=at_most, check=check,
                              group=group, resumable=resumable)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run."""

    data_dir: str = _setting(
        "data/cats_and_dogs_filtered", "data",
        "Dataset folder: either train/ and validation/ each with one sub-folder per class, or the "
        "class sub-folders themselves together with --validation_split.", check=_NOT_EMPTY)
    validation_split: float = _setting(
        0.0, "data", "Fraction of each class held out for validation when --data_dir has no "
        "validation/ folder; 0 means use validation/.", at_least=0.0, at_most=0.9)
    evaluation_split: float = _setting(
        DEFAULT_EVALUATION_SPLIT, "data", "Fraction of each class of the validation photos kept "
        "apart for evaluation (the gate's blessing, evaluate's figures) when --data_dir has no "
        "test/ folder; the rest choose the best epoch, so no photo both chooses the model and "
        "judges it. Chosen by a fixed hash of each photo's class and name: the same photos in "
        "every run, whatever --seed. 0: no evaluation photos (the gate then judges on the "
        "selection photos and says so).", at_least=0.0, at_most=0.9)
    image_size: int = _setting(150, "data", "Side in pixels of the square images the model sees.",
                               at_least=MIN_IMAGE_SIZE, at_most=1024)
    on_bad_image: OnBadImage = _setting(
        "skip", "data", "What to do with files that cannot be decoded: skip them (listed in the "
        "log and summary.json) or stop before training.")
    max_image_pixels: int = _setting(
        MAX_IMAGE_PIXELS, "data", "Largest width × height an image file may declare; larger ones "
        "are refused before decoding (a small file can declare gigabytes of pixels). Pillow's "
        "limit by default.", at_least=1, resumable=True)
    download: bool = _setting(
        False, "data", "Download --download_url into --data_dir when --data_dir does not exist.",
        resumable=True)
    download_url: str = _setting(CATS_AND_DOGS_URL, "data",
                                 "Zip archive of the dataset for --download.", resumable=True)
    download_sha256: str = _setting(
        "", "data", "Expected sha256 of the archive at --download_url; empty: not checked, the "
        "computed digest is logged so it can be pinned.", check=_SHA256, resumable=True)
    cache_features: bool = _setting(
        False, "data", "Compute the frozen base's pooled features of each image once and train "
        "the head on them; with augmentation on, of --feature_views views of each image. The "
        "export is the same full model.", resumable=True)
    feature_views: int = _setting(
        0, "data", "With --cache_features and augmentation on: how many views of each training "
        "image to compute features of once (view 0 unaugmented, the others seeded augmented "
        "ones); each epoch draws one view per image. 0: DEFAULT_FEATURE_VIEWS when augmenting, "
        "else 1; 1 with augmentation on is refused.", at_least=0, at_most=32)
    cache_frozen_blocks: bool = _setting(
        True, "data", "With --cache_features and --fine_tune_from: the feature pass also keeps "
        "the output of the last frozen VGG16 layer (block3_pool for block4_conv1) of each "
        "training view and validation image, and fine-tuning runs only the trainable blocks and "
        "the head on it. In memory while a split's take up to 4 GiB, else on disk in "
        "--feature_cache_dir (or the run folder's feature_cache/).")
    feature_cache_dir: str = _setting(
        "", "data", "Keep --cache_features features on disk here, reused by later runs while "
        "weights, image size and files are unchanged; empty: in memory for this run only.",
        resumable=True)

    weights: str = _setting(
        "imagenet", "model", "VGG16 base weights: 'imagenet' (Keras downloads them on first "
        "use), 'none' (random), or the path of a VGG16 no-top weights .h5 file.", check=_WEIGHTS)
    fine_tune_from: str = _setting(
        "", "model", "After the head epochs, unfreeze VGG16 from this layer (e.g. block5_conv1) "
        "to the top and train --fine_tune_epochs more with a fresh Adam; empty: no fine-tuning.",
        check=_LAYER)

    batch_size: int = _setting(16, "training", "Global batch size (summed over all replicas).",
                               at_least=1)
    epochs: int = _setting(10, "training", "Training epochs.", at_least=1, resumable=True)
    learning_rate: float = _setting(1e-3, "training", "Adam learning rate.", at_least=1e-9,
                                    at_most=1.0)
    schedule: Schedule = _setting(
        "constant", "training", "Learning rate over the head epochs: constant, or cosine "
        "(decays from --learning_rate to 0 over its --epochs, step by step).")
    weight_decay: float = _setting(
        0.0, "training", "Decoupled weight decay (AdamW) of both phases' Adam: each step "
        "shrinks every trained weight by this × the learning rate. 0 disables.",
        at_least=0.0, at_most=1.0)
    ema: float = _setting(
        0.0, "training", "Exponential moving average of the head's weights over the head epochs, "
        "with this momentum per step (e.g. 0.99; Keras' optimizer EMA): at the end of each "
        "epoch the average is written over the weights, so the epoch is validated, "
        "checkpointed and exported from it, and the next starts from it. Steadies the head's "
        "validation curve. 0 disables.", at_least=0.0, at_most=0.9999)
    flip: Flip = _setting("horizontal", "training", "RandomFlip mode in training.")
    rotation: float = _setting(0.0, "training", "RandomRotation factor, a fraction of a full "
                               "turn; 0 disables.", at_least=0.0, at_most=1.0)
    zoom: float = _setting(0.2, "training", "RandomZoom factor; 0 disables.", at_least=0.0,
                           at_most=0.9)
    seed: int = _setting(42, "training", "Seed for weights, data order and augmentation.",
                         at_least=0, at_most=2**31 - 1)
    fine_tune_epochs: int = _setting(5, "training", "Epochs of the fine-tuning phase.",
                                     at_least=1, resumable=True)
    fine_tune_learning_rate: float = _setting(
        1e-5, "training", "Adam learning rate of the fine-tuning phase.", at_least=1e-12,
        at_most=1.0)
    fine_tune_schedule: Schedule = _setting(
        "constant", "training", "Learning rate over the fine-tuning phase: constant, or cosine "
        "(decays from --fine_tune_learning_rate to 0 over its --fine_tune_epochs, step by "
        "step).")
    fine_tune_warmup_epochs: float = _setting(
        0.0, "training", "Warm the fine-tuning learning rate up linearly from 0 to "
        "--fine_tune_learning_rate over this many epochs (a fraction is allowed, e.g. 0.3), then "
        "follow --fine_tune_schedule: a fresh Adam's first steps on the unfrozen blocks move "
        "them before its moment estimates settle. 0 disables.", at_least=0.0, at_most=100.0)
    fine_tune_ema: float = _setting(
        0.0, "training", "--ema for the fine-tuning phase: the moving average of the weights it "
        "trains, written over them at the end of each fine-tuning epoch. 0 disables.",
        at_least=0.0, at_most=0.9999)
    label_smoothing: float = _setting(
        0.0, "training", "Train against smoothed targets, (1 - s) × one-hot + s / classes "
        "(Keras' label_smoothing); the validation loss stays the plain log loss. 0 disables.",
        at_least=0.0, at_most=0.5)
    mixup: float = _setting(
        0.0, "training", "Mixup: each training example (image, cached features or cached "
        "activations) is blended with another of its batch, weight w ~ Beta(a, a), and trained "
        "against both labels weighted w and 1 - w; a is this value (e.g. 0.2), in both phases. "
        "Validation is unmixed. 0 disables.", at_least=0.0, at_most=10.0)
    run_dir: str = _setting(
        "runs/catdog", "training", "Run folder: checkpoints/, logs/, tensorboard/, metrics.csv, "
        "summary.json. Starting again with the same run_dir resumes from its last finished "
        "epoch.", check=_NOT_EMPTY, resumable=True)

    strategy: Strategy = _setting(
        "auto", "scale", "tf.distribute strategy; auto: mirrored when more than one GPU is "
        "visible, else default. multi_worker reads the cluster from TF_CONFIG.", resumable=True)
    devices: tuple[str, ...] = _setting(
        (), "scale", "Devices for one_device/mirrored, e.g. /gpu:0,/gpu:1; empty: all GPUs (or "
        "the logical CPUs).", resumable=True)
    logical_devices: int = _setting(
        0, "scale", "Split the first CPU into this many logical devices (try distribution without "
        "GPUs); 0 leaves it whole.", at_least=0, at_most=64, resumable=True)
    scale_learning_rate: bool = _setting(
        False, "scale", "Multiply --learning_rate by the replica count (linear scaling).")
    data_service: str = _setting(
        "", "scale", "A tf.data service dispatcher, grpc://host:port, whose workers read, decode "
        "and batch the training images (each once per epoch) on their own CPUs; empty: this "
        "process does it. Start them with python -m catdog.data_service.", check=_SERVICE,
        resumable=True)
    data_service_timeout_seconds: float = _setting(
        120.0, "scale", "With --data_service: the longest wait for one training batch; past it "
        "the run stops in one line naming the service (finished epochs stay saved, and the same "
        "command resumes). A worker lost mid-epoch costs that epoch the images of its unfinished "
        "splits instead, which the log counts.", at_least=1.0, resumable=True)
    mixed_precision: Precision = _setting(
        "auto", "scale", "Keras precision policy of training and the feature pass; auto: "
        "mixed_float16 on GPUs of compute capability >= 7.0, mixed_bfloat16 on CPUs with native "
        "bfloat16 (avx512_bf16 or amx_bf16), else float32.")
    jit_compile: AutoBool = _setting(
        "auto", "scale", "XLA-compile the model step; auto: on for a single GPU only.",
        resumable=True)

    export_dir: str = _setting(
        "export", "export", "Where <model_name>.h5 and the SavedModel versions "
        "<model_name>/<N>/ are written.", check=_NOT_EMPTY, resumable=True)
    model_name: str = _setting(
        contract.DEFAULT_MODEL_NAME, "export", "Name of the exported model (file and TF Serving "
        "model name).", check=_MODEL_NAME, resumable=True)
    export_precision: ExportPrecision = _setting(
        "float32", "export", "Precision the exports compute in: float32 (runs well on any "
        "machine), compute (the policy training used, e.g. mixed_bfloat16), or auto "
        "(bfloat16 when the run trained in it and, on evaluation photos, its answers are "
        "float32's up to bfloat16's rounding and it is faster; the measurement goes into "
        "gate.json).",
        resumable=True)
    test_time_flip: bool = _setting(
        False, "export", "The exports answer each image with the mean of its answers and its "
        "left-right mirror's (test-time augmentation), in every signature and wherever catdog "
        "loads the .h5 (the export records it): about twice the model time per request. The "
        "run's own val_accuracy is the model's without flips.", resumable=True)
    keep_versions: int = _setting(
        0, "export", "After publishing, keep only this many newest SavedModel versions in the "
        "served base path; 0 keeps all.", at_least=0, resumable=True)
    publish: Publish = _setting(
        "if_better", "export", "After training, the new SavedModel is a candidate in "
        "<export_dir>/candidates/<model_name>/; if_better: publish it into <export_dir>/"
        "<model_name>/ when it loads, answers and is no worse than the newest published "
        "version (exit status 3 when held back, 4 when it fails to load or answer); always: "
        "when it loads and answers; never: leave it a candidate (python -m catdog.publish "
        "gates it later).", resumable=True)
    gate_data_dir: str = _setting(
        "", "export", "Photos the gate judges both models on: a dataset folder (its validation "
        "split) or class sub-folders; empty: the run's validation split.", resumable=True)
    gate_tolerance: float = _setting(
        0.0, "export", "The gate publishes a candidate whose accuracy is at least the "
        "baseline's minus this.", at_least=0.0, at_most=1.0, resumable=True)
    gate_min_accuracy: float = _setting(
        0.0, "export", "When above 0, the gate also holds back a candidate whose accuracy is "
        "below this, baseline or not.", at_least=0.0, at_most=1.0, resumable=True)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raises CatdogError naming the first invalid setting and what would be valid."""
        fields_lib.validate(self, CROSS_FIELD_RULES)

    @property
    def total_epochs(self) -> int:
        """Head epochs plus fine-tuning epochs (when --fine_tune_from is set)."""
        return self.epochs + (self.fine_tune_epochs if self.fine_tune_from else 0)

    @property
    def views(self) -> int:
        """The feature views of each training image: --feature_views, 0 resolved."""
        if self.feature_views:
            return self.feature_views
        return DEFAULT_FEATURE_VIEWS if self.cache_features and self.augments else 1

    @property
    def frozen_blocks_cached(self) -> bool:
        """Whether fine-tuning trains on cached frozen-block activations (something is frozen
        only when fine-tuning starts above block1_conv1)."""
        return (self.cache_features and self.cache_frozen_blocks
                and self.fine_tune_from not in ("", VGG16_LAYERS[0]))

    @property
    def augments(self) -> bool:
        """Whether any augmentation layer is active in training."""
        return augments(self.flip, self.rotation, self.zoom)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values (tuples become lists), as config.json stores them."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def changes_that_break_resume(self, previous: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ from `previous` (a saved `to_dict()`) and forbid resuming."""
        return {
            field.name: (previous.get(field.name), value)
            for field, value in zip(dataclasses.fields(self), self.to_dict().values())
            if not field.metadata["resumable"] and previous.get(field.name) != value
        }


def augments(flip: str, rotation: float, zoom: float) -> bool:
    """Whether these augmentation settings change a training image."""
    return flip != "none" or rotation > 0 or zoom > 0


# Rules between settings: (setting names, predicate over their values, what is valid).
CROSS_FIELD_RULES: tuple[CrossRule, ...] = (
    (("cache_features", "feature_views", "flip", "rotation", "zoom"),
     lambda cache, views, *augmentation: not (cache and views == 1 and augments(*augmentation)),
     "cache_features with augmentation on needs feature_views of 2 or more, or 0 for the "
     "default (an augmented image's features change every epoch), or augmentation off (flip "
     "none, rotation 0, zoom 0)"),
    (("cache_features", "feature_views", "flip", "rotation", "zoom"),
     lambda cache, views, *augmentation: views <= 1 or (cache and augments(*augmentation)),
     "feature_views above 1 needs cache_features and augmentation on"),
)


def fields() -> dict[str, dataclasses.Field]:
    """Config's fields by name, each with its metadata (group, help, bounds, rule)."""
    return fields_lib.fields(Config)
