"""The seed's whole job, and where its time goes: one process, one table.

    pip install -e '.[bench]'
    python benchmarks/training.py --data_dir=../shared/datasets/cats_vs_dogs \
        --weights=../shared/weights/vgg16_hed_notop.weights.h5

On `configs/seed.flags` (150 px, batch 16, 10 epochs, horizontal flip + 0.2 zoom) over every
photo of --data_dir it prints:
  - VGG16 images/s under float32 and mixed_bfloat16, for the feature pass (forward only) and the
    full-path training step (augmentation, forward, head update), alternating the two policies
    over --rounds rounds and keeping each one's best, with their ratio;
  - the seed job end to end: on the full path in float32 (augmented images through VGG16 every
    epoch); with `--cache_features --feature_views=K` in float32; the same in mixed_bfloat16;
    and, for choosing K, further K values and no augmentation at all, in the precision
    `--mixed_precision=auto` picks here: each with its wall time, best validation accuracy and
    speed-up over the full path;
  - the CPU model and its bfloat16 flags, since the ratios depend on them.
"""

from __future__ import annotations

import itertools
import tempfile
import time

import input_pipeline  # benchmarks/ is on sys.path when this file runs as a script
import keras
import machine
import seed_job as seed_job_lib
import tensorflow as tf
from absl import app, flags

from catdog import data, distribute, steps, train
from catdog.config import Config

_WEIGHTS = flags.DEFINE_string("weights", "none", "VGG16 weights: none or a weights file.")
_VIEWS = flags.DEFINE_integer("views", 2, "K of the float32 and bfloat16 feature-view runs.")
_MORE_VIEWS = flags.DEFINE_list("more_views", ["4"], "Further K values, in the auto precision.")
_FULL_PATH = flags.DEFINE_bool("full_path", True, "Run the full-path seed job (the slowest).")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating rounds of the throughput measurement.")
def seed_config(root: str, name: str, *overrides: str) -> Config:
    """configs/seed.flags plus `overrides`, on this benchmark's data and weights."""
    return seed_job_lib.seed_config(
        f"--data_dir={flags.FLAGS.data_dir}", f"--weights={_WEIGHTS.value}",
        f"--run_dir={root}/{name}", f"--export_dir={root}/{name}-export", "--strategy=default",
        *overrides)


def forward_images_per_second(extractor: keras.Model, batch: tf.Tensor, steps_: int) -> float:
    forward = tf.function(lambda images: extractor(images, training=False))
    forward(batch).numpy()  # trace and warm up
    start = time.perf_counter()
    for _ in range(steps_):
        result = forward(batch)
    result.numpy()
    return steps_ * len(batch) / (time.perf_counter() - start)


def throughput(config: Config, batch) -> dict[str, float]:
    """Feature-pass and full-path training-step images/s under `config`'s policy."""
    distribution = distribute.setup_distribution(config)
    trainer = steps.Trainer(config, 2, distribution)
    count = flags.FLAGS.steps  # defined by input_pipeline, with --warmup and --data_dir
    return {
        "feature pass": forward_images_per_second(trainer.feature_extractor, batch[0], count),
        "training step": input_pipeline.training_images_per_second(
            trainer, itertools.repeat(batch), flags.FLAGS.warmup, count),
    }


def seed_job(config: Config) -> tuple[float, float, str]:
    """(wall seconds, best validation accuracy, precision) of one whole training run, export
    included."""
    start = time.perf_counter()
    result = train.train(config)
    return (time.perf_counter() - start, result.summary["best_val_accuracy"],
            result.summary["distribution"]["precision"])


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as root:
        probe = seed_config(root, "probe", "--mixed_precision=float32")
        files, validation = data.find_splits(probe.data_dir, 0.0, seed=0)
        batch = next(iter(data.batches(data.decoded_images(files, probe.image_size),
                                       probe.batch_size)))
        policies = ("float32", "mixed_bfloat16")
        speeds = {policy: {} for policy in policies}
        for _, policy in itertools.product(range(_ROUNDS.value), policies):
            measured = throughput(seed_config(root, "probe", f"--mixed_precision={policy}"),
                                  batch)
            for kind, value in measured.items():
                speeds[policy][kind] = max(value, speeds[policy].get(kind, 0.0))

        views = f"--feature_views={_VIEWS.value}"
        runs = []
        if _FULL_PATH.value:
            runs.append(("full path (augmented images through VGG16 every epoch), float32",
                         seed_config(root, "full", "--mixed_precision=float32")))
        runs.append((f"--cache_features {views}, float32",
                     seed_config(root, "views32", "--cache_features", views,
                                 "--mixed_precision=float32")))
        runs.append((f"--cache_features {views}, mixed_bfloat16",
                     seed_config(root, "views16", "--cache_features", views,
                                 "--mixed_precision=mixed_bfloat16")))
        for k in _MORE_VIEWS.value:
            runs.append((f"--cache_features --feature_views={k}, auto",
                         seed_config(root, f"views{k}", "--cache_features",
                                     f"--feature_views={k}")))
        runs.append(("no augmentation (--flip=none --zoom=0 --cache_features), auto",
                     seed_config(root, "plain", "--flip=none", "--zoom=0", "--cache_features")))
        results = [(name, *seed_job(config)) for name, config in runs]

    print(f"\n{time.strftime('%Y-%m-%d')}, {machine.cpu_description()}, "
          f"TensorFlow {tf.__version__}; "
          f"{probe.image_size} px, batch {probe.batch_size}, {len(files)} training and "
          f"{len(validation)} validation images, weights {_WEIGHTS.value}\n")
    print("| VGG16 images/s | float32 | mixed_bfloat16 | ratio |")
    print("|---|---:|---:|---:|")
    for kind in ("feature pass", "training step"):
        fp32, bf16 = speeds["float32"][kind], speeds["mixed_bfloat16"][kind]
        print(f"| {kind} | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.2f}x |")
    print("\n| seed job (configs/seed.flags, 10 epochs) | ran in | wall time | "
          "best val_accuracy | speed-up |")
    print("|---|---|---:|---:|---:|")
    reference = results[0][1]
    for name, seconds, accuracy, precision in results:
        print(f"| {name} | {precision} | {seconds / 60:.1f} min | {accuracy:.4f} | "
              f"{reference / seconds:.1f}x |")


if __name__ == "__main__":
    app.run(main)
