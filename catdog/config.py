"""The typed, frozen settings of one training run, built once from flags and passed everywhere."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from catdog.errors import CatdogError
from catdog.images import MAX_IMAGE_PIXELS

Flip = Literal["horizontal", "vertical", "horizontal_and_vertical", "none"]
Strategy = Literal["auto", "default", "one_device", "mirrored", "multi_worker"]
Precision = Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
AutoBool = Literal["auto", "true", "false"]
OnBadImage = Literal["skip", "fail"]

# Google's cats_and_dogs_filtered subset of Kaggle's Dogs vs. Cats (68,606,236 bytes).
CATS_AND_DOGS_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"

# Fields that may change between a run and its resumption without invalidating its checkpoints.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "run_dir", "export_dir", "model_name", "keep_versions", "download", "download_url",
     "download_sha256", "strategy", "devices", "logical_devices", "jit_compile", "fine_tune_epochs",
     "cache_features", "feature_cache_dir", "max_image_pixels"}
)


CACHE_NEEDS_NO_AUGMENTATION = (
    "--cache_features needs augmentation off (--flip=none --rotation=0 --zoom=0): an augmented "
    "image's features change every epoch")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run; see catdog/flags.py for each field's meaning."""

    data_dir: str
    validation_split: float = 0.0
    image_size: int = 150
    batch_size: int = 16
    epochs: int = 10
    learning_rate: float = 1e-3
    weights: str = "imagenet"
    flip: Flip = "horizontal"
    rotation: float = 0.0
    zoom: float = 0.2
    seed: int = 42
    on_bad_image: OnBadImage = "skip"
    max_image_pixels: int = MAX_IMAGE_PIXELS
    run_dir: str = "runs/catdog"
    export_dir: str = "export"
    model_name: str = "catdog"
    keep_versions: int = 0
    strategy: Strategy = "auto"
    devices: tuple[str, ...] = ()
    logical_devices: int = 0
    scale_learning_rate: bool = False
    mixed_precision: Precision = "auto"
    jit_compile: AutoBool = "auto"
    fine_tune_from: str = ""
    fine_tune_epochs: int = 5
    fine_tune_learning_rate: float = 1e-5
    cache_features: bool = False
    feature_cache_dir: str = ""
    download: bool = False
    download_url: str = CATS_AND_DOGS_URL
    download_sha256: str = ""

    def __post_init__(self):
        if self.cache_features and self.augments:
            raise CatdogError(CACHE_NEEDS_NO_AUGMENTATION)

    @property
    def total_epochs(self) -> int:
        """Head epochs plus fine-tuning epochs (when --fine_tune_from is set)."""
        return self.epochs + (self.fine_tune_epochs if self.fine_tune_from else 0)

    @property
    def augments(self) -> bool:
        """Whether any augmentation layer is active in training."""
        return self.flip != "none" or self.rotation > 0 or self.zoom > 0

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values (tuples become lists), as config.json stores them."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def changes_that_break_resume(self, previous: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ from `previous` (a saved `to_dict()`) and forbid resuming."""
        return {
            name: (previous.get(name), value)
            for name, value in self.to_dict().items()
            if name not in RESUMABLE_CHANGES and previous.get(name) != value
        }
