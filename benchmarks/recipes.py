"""Which of catdog's own options gives the best model: a small grid of recipes, one table.

    pip install -e '.[bench]'
    python benchmarks/recipes.py --data_dir=../shared/datasets/cats_vs_dogs \
        --weights=../shared/weights/vgg16_hed_notop.weights.h5

Every recipe is `configs/seed.flags` (150 px, batch 16, 10 head epochs, Adam 1e-3, flip + 0.2
zoom) plus the flags it names, trained on every photo of --data_dir/train; where the base is
frozen, augmentation comes through feature views (`--cache_features`, the default K).

No photo both chooses and judges. Each run chooses its best epoch on its selection photos (half
of --data_dir/validation, `--evaluation_split`), and the search chooses the recipe by that same
selection accuracy; neither ever sees the evaluation photos (the other half). Each exported .h5
is then evaluated once on the evaluation photos with catdog.evaluate (accuracy with its 95% BCa
interval, log loss, ECE), beside the recipe's wall time (training, feature passes, export). The
winner's evaluation figure is the honest one; the others are shown for reference, not used.
"""

from __future__ import annotations

import tempfile
import time

import flops  # benchmarks/ is on sys.path when this file runs as a script
import machine
import seed_job
import tensorflow as tf
from absl import app, flags

from catdog import evaluate, train

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/datasets/cats_vs_dogs",
                                "Dataset with train/ and validation/ class folders.")
_WEIGHTS = flags.DEFINE_string("weights", "none", "VGG16 weights: none or a weights file.")
_ONLY = flags.DEFINE_list("only", [], "Run only these recipes (names from RECIPES); empty: all.")
_CACHE = flags.DEFINE_string(
    "feature_cache_dir", "", "Shared by the recipes: one whose feature pass (views, depth) an "
    "earlier recipe computed reuses it, and its wall time leaves that pass out (the table's "
    "feature-pass column shows it); empty: each recipe computes its own.")
_TEST_TIME_FLIP = flags.DEFINE_bool(
    "test_time_flip", False, "Also evaluate each export with evaluate --test_time_flip: its "
    "accuracy and the seconds both evaluations took.")

RECIPES = {  # name: (what it is, the flags it adds to configs/seed.flags)
    "head": ("head, no augmentation", ["--cache_features", "--flip=none", "--zoom=0"]),
    "views": ("head, augmented (feature views)", ["--cache_features"]),
    "views-lr1e-4": ("head at learning rate 1e-4, augmented",
                     ["--cache_features", "--learning_rate=0.0001"]),
    "ft-block5": ("head + fine-tune from block5_conv1 (2 epochs at 1e-5)",
                  ["--cache_features", "--fine_tune_from=block5_conv1", "--fine_tune_epochs=2"]),
    "ft-block4-images": ("best.flags before: fine-tune from block4_conv1 (2 epochs at 1e-5) on "
                         "images", ["--cache_features", "--fine_tune_from=block4_conv1",
                                    "--fine_tune_epochs=2", "--nocache_frozen_blocks"]),
    "ft-block4": ("best.flags after: the same on cached block3_pool activations",
                  ["--cache_features", "--fine_tune_from=block4_conv1", "--fine_tune_epochs=2"]),
    "224px": ("head at 224 px, augmented", ["--cache_features", "--image_size=224"]),
    # The fine-tuning recipe searched again once frozen blocks are cached (2026-12-02).
    "ft-block4-3ep": ("fine-tune from block4_conv1, 3 epochs at 1e-5",
                      ["--cache_features", "--fine_tune_from=block4_conv1",
                       "--fine_tune_epochs=3"]),
    "ft-block4-cosine": ("fine-tune from block4_conv1, 2 epochs, cosine from 3e-5",
                         ["--cache_features", "--fine_tune_from=block4_conv1",
                          "--fine_tune_epochs=2", "--fine_tune_learning_rate=0.00003",
                          "--fine_tune_schedule=cosine"]),
    "ft-block4-smooth": ("fine-tune from block4_conv1, 2 epochs, label smoothing 0.1",
                         ["--cache_features", "--fine_tune_from=block4_conv1",
                          "--fine_tune_epochs=2", "--label_smoothing=0.1"]),
    "ft-block3": ("fine-tune from block3_conv1, 2 epochs at 1e-5",
                  ["--cache_features", "--fine_tune_from=block3_conv1", "--fine_tune_epochs=2"]),
    "ft-block4-k4": ("fine-tune from block4_conv1, 2 epochs, 4 feature views",
                     ["--cache_features", "--fine_tune_from=block4_conv1", "--fine_tune_epochs=2",
                      "--feature_views=4"]),
}


def run_recipe(root: str, index: int, extra: list[str]) -> dict:
    """Trains one recipe and evaluates its export; returns the table row's figures."""
    config = seed_job.seed_config(
        f"--data_dir={_DATA_DIR.value}", f"--weights={_WEIGHTS.value}",
        f"--run_dir={root}/run{index}", f"--export_dir={root}/export{index}",
        "--strategy=default", *([f"--feature_cache_dir={_CACHE.value}"] if _CACHE.value else []),
        *extra)
    start = time.perf_counter()
    result = train.train(config)
    seconds = time.perf_counter() - start
    # The dataset folder: evaluate judges on the evaluation photos the run kept apart.
    report = evaluate.evaluate(str(result.exports.h5), config.data_dir,
                               f"{root}/evaluation{index}", max_explained=0)
    flipped = {}
    if _TEST_TIME_FLIP.value:
        flipped = evaluate.evaluate(str(result.exports.h5), config.data_dir,
                                    f"{root}/evaluation{index}-flip", test_time_flip=True,
                                    max_explained=0)
    return {"seconds": seconds, "accuracy": report["accuracy"], "log_loss": report["log_loss"],
            "interval": report["intervals"]["accuracy"], "photos": report["images"],
            "selection_accuracy": result.summary["best_val_accuracy"],
            "selection_photos": result.summary["validation_images"],
            "feature_seconds": result.summary["feature_seconds"],
            "flip_accuracy": flipped.get("accuracy"),
            "answer_seconds": (report["answer_seconds"], flipped.get("answer_seconds")),
            "ece": report["expected_calibration_error"],
            "precision": result.summary["distribution"]["precision"],
            "best_epoch": result.summary["best_epoch"], "epochs": config.total_epochs,
            "views": config.views, "tflop": job_flops(config, result.summary) / 1e12}


def job_flops(config, summary: dict) -> float:
    """The VGG16 FLOPs the recipe's job must compute (benchmarks/flops.py)."""
    return flops.Job(summary["train_images"], summary["validation_images"], config.image_size,
                     config.epochs, config.views if config.cache_features else 0,
                     config.fine_tune_from, config.fine_tune_epochs if config.fine_tune_from
                     else 0, config.frozen_blocks_cached).flops()


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
    print(f"\n{time.strftime('%Y-%m-%d')}, {machine.cpu_description()}, TensorFlow "
          f"{tf.__version__}, weights {_WEIGHTS.value}\n")
    print("| recipe | flags added to configs/seed.flags | views | precision | best epoch | "
          "selection accuracy (chooses) | evaluation accuracy [95% BCa] | log loss | ECE | "
          "wall time | of it, feature pass | VGG16 TFLOP | with --test_time_flip "
          "(evaluation s) |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        what, extra = RECIPES[name]
        low, high = row["interval"]
        print(f"| {name}: {what} | `{' '.join(extra)}` | {row['views']} | {row['precision']} | "
              f"{row['best_epoch']} of {row['epochs']} | {row['selection_accuracy']:.4f} | "
              f"{row['accuracy']:.4f} [{low:.3f}, {high:.3f}] | {row['log_loss']:.4f} | "
              f"{row['ece']:.4f} | {row['seconds'] / 60:.1f} min | "
              f"{row['feature_seconds'] / 60:.1f} min | {row['tflop']:.0f} | "
              f"{_flip_cell(row)} |")
    winner = max(rows, key=lambda name: rows[name]["selection_accuracy"])
    row = rows[winner]
    print(f"\nChosen on the {row['selection_photos']} selection photos: {winner} "
          f"({row['selection_accuracy']:.4f}); on the {row['photos']} evaluation photos, which "
          f"chose nothing: {row['accuracy']:.4f} [{row['interval'][0]:.3f}, "
          f"{row['interval'][1]:.3f}] (95% BCa bootstrap), one run each.")


def _flip_cell(row: dict) -> str:
    plain, flipped = row["answer_seconds"]
    if row["flip_accuracy"] is None:
        return f"not run ({plain:.0f} s)"
    return f"{row['flip_accuracy']:.4f} ({plain:.0f} s → {flipped:.0f} s)"


if __name__ == "__main__":
    app.run(main)
