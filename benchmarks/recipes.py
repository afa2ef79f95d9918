"""Which of catdog's own options gives the best model: a small grid of recipes, one table.

    pip install -e '.[bench]'
    python benchmarks/recipes.py --data_dir=../shared/datasets/cats_vs_dogs \
        --weights=../shared/weights/vgg16_hed_notop.weights.h5

Every recipe is `configs/seed.flags` (150 px, batch 16, 10 head epochs, Adam 1e-3, flip + 0.2
zoom) plus the flags it names, trained on every photo of --data_dir/train; where the base is
frozen, augmentation comes through feature views (`--cache_features`, the default K). Each
exported .h5 is then evaluated on --data_dir/validation with catdog.evaluate: accuracy, log loss
and expected calibration error (ECE), with the recipe's wall time (training, feature passes and
export). The best epoch is chosen on that same validation split, so the figures compare recipes
with each other; they are not a held-out test score.
"""

from __future__ import annotations

import os
import tempfile
import time

import seed_job  # benchmarks/ is on sys.path when this file runs as a script
import tensorflow as tf
from absl import app, flags

from catdog import distribute, evaluate, train

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/datasets/cats_vs_dogs",
                                "Dataset with train/ and validation/ class folders.")
_WEIGHTS = flags.DEFINE_string("weights", "none", "VGG16 weights: none or a weights file.")
_ONLY = flags.DEFINE_list("only", [], "Run only these recipes (names from RECIPES); empty: all.")

RECIPES = {  # name: (what it is, the flags it adds to configs/seed.flags)
    "head": ("head, no augmentation", ["--cache_features", "--flip=none", "--zoom=0"]),
    "views": ("head, augmented (feature views)", ["--cache_features"]),
    "views-lr1e-4": ("head at learning rate 1e-4, augmented",
                     ["--cache_features", "--learning_rate=0.0001"]),
    "ft-block5": ("head + fine-tune from block5_conv1 (2 epochs at 1e-5)",
                  ["--cache_features", "--fine_tune_from=block5_conv1", "--fine_tune_epochs=2"]),
    "ft-block4": ("head + fine-tune from block4_conv1 (2 epochs at 1e-5)",
                  ["--cache_features", "--fine_tune_from=block4_conv1", "--fine_tune_epochs=2"]),
    "224px": ("head at 224 px, augmented", ["--cache_features", "--image_size=224"]),
}


def run_recipe(root: str, index: int, extra: list[str]) -> dict:
    """Trains one recipe and evaluates its export; returns the table row's figures."""
    config = seed_job.seed_config(
        f"--data_dir={_DATA_DIR.value}", f"--weights={_WEIGHTS.value}",
        f"--run_dir={root}/run{index}", f"--export_dir={root}/export{index}",
        "--strategy=default", *extra)
    start = time.perf_counter()
    result = train.train(config)
    seconds = time.perf_counter() - start
    report = evaluate.evaluate(str(result.exports.h5), os.path.join(config.data_dir, "validation"),
                               f"{root}/evaluation{index}")
    return {"seconds": seconds, "accuracy": report["accuracy"], "log_loss": report["log_loss"],
            "ece": report["expected_calibration_error"],
            "precision": result.summary["distribution"]["precision"],
            "best_epoch": result.summary["best_epoch"], "epochs": config.total_epochs,
            "views": config.views}


def main(argv):
    del argv
    unknown = set(_ONLY.value) - set(RECIPES)
    if unknown:
        raise app.UsageError(f"--only: unknown recipes {sorted(unknown)}; known: "
                             f"{', '.join(RECIPES)}")
    chosen = [name for name in RECIPES if not _ONLY.value or name in _ONLY.value]
    with tempfile.TemporaryDirectory() as root:
        rows = {name: run_recipe(root, index, RECIPES[name][1])
                for index, name in enumerate(chosen)}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?")
    print(f"\n{time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} cores, TensorFlow "
          f"{tf.__version__}, weights {_WEIGHTS.value}; bfloat16 flags: "
          f"{', '.join(f for f in distribute.BFLOAT16_CPU_FLAGS if f in distribute.cpu_flags())}"
          "\n")
    print("| recipe | flags added to configs/seed.flags | views | precision | best epoch | "
          "val accuracy | log loss | ECE | wall time |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        what, extra = RECIPES[name]
        print(f"| {name}: {what} | `{' '.join(extra)}` | {row['views']} | {row['precision']} | "
              f"{row['best_epoch']} of "
              f"{row['epochs']} | {row['accuracy']:.4f} | {row['log_loss']:.4f} | "
              f"{row['ece']:.4f} | {row['seconds'] / 60:.1f} min |")


if __name__ == "__main__":
    app.run(main)
