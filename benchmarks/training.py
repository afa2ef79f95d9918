"""Training and evaluation speed, measured side by side in one process.

    pip install -e '.[bench]'
    python benchmarks/training.py --data_dir=../shared/datasets/cats_vs_dogs \
        --weights=../shared/weights/vgg16_hed_notop.weights.h5

At 150 px and batch 16 it prints one table:
  - training images/s: catdog's tf.data pipeline, the in-memory ceiling, the seed's
    ImageDataGenerator path (benchmarks/input_pipeline.py's measurements, short runs);
  - a 10-epoch head training (augmentation off) without --cache_features, extrapolated from
    measured 1- and 2-epoch runs, against the same 10 epochs with --cache_features run in full
    (its one feature pass included);
  - evaluation images/s of the exported model (catdog.evaluate's prediction loop).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import platform
import tempfile
import time

import tensorflow as tf
from absl import app, flags

import input_pipeline  # benchmarks/ is on sys.path when this file runs as a script
from catdog import data, distribute, evaluate, inference, steps, train
from catdog.config import Config

_WEIGHTS = flags.DEFINE_string("weights", "none", "VGG16 weights: none or a weights file.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Epochs of the compared head trainings.")


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main(argv):
    del argv
    data_dir = flags.FLAGS.data_dir  # defined by input_pipeline, with its other flags
    size, batch = 150, 16
    base = Config(data_dir=data_dir, image_size=size, batch_size=batch,
                  weights=_WEIGHTS.value, flip="none", zoom=0.0, epochs=_EPOCHS.value,
                  strategy="default")
    distribution = distribute.setup_distribution(base)
    files, _ = data.find_splits(data_dir, 0.0, seed=0)
    decoded = data.decoded_images(files, size)
    trainer = steps.Trainer(base, 2, distribution)
    step_count, warmup = 30, 3
    pipeline = input_pipeline.training_images_per_second(
        trainer, data.batches(data.decoded_images(files, size), batch, shuffle_seed=1), warmup,
        step_count)
    in_memory = next(iter(data.batches(decoded, batch)))
    ceiling = input_pipeline.training_images_per_second(
        trainer, itertools.repeat(in_memory), warmup, step_count)
    seed_path = input_pipeline.training_images_per_second(
        trainer, input_pipeline.as_tensors(input_pipeline.seed_generator_batches(
            os.path.join(data_dir, "train"), size, batch)), warmup, step_count)

    with tempfile.TemporaryDirectory() as tmp:
        def on_images(epochs):
            return timed(lambda: train.train(dataclasses.replace(
                base, epochs=epochs, run_dir=f"{tmp}/plain{epochs}",
                export_dir=f"{tmp}/plain{epochs}-export")))

        plain, plain_seconds = on_images(1)
        _, two_epochs_seconds = on_images(2)
        cached_config = dataclasses.replace(base, cache_features=True, run_dir=f"{tmp}/cached",
                                            export_dir=f"{tmp}/cached-export")
        cached, cached_seconds = timed(lambda: train.train(cached_config))
        classifier = inference.load_classifier(cached.exports.h5)
        _, validation = data.find_splits(data_dir, 0.0, seed=0)
        _, eval_seconds = timed(lambda: evaluate.predict_files(classifier, validation, 32))

    # Epoch 1 of a run on images also computes the validation features (once per run); each
    # later epoch costs one training pass. The seed's way re-validates on images every epoch.
    later_epoch = two_epochs_seconds - plain_seconds
    plain_estimate = plain_seconds + (_EPOCHS.value - 1) * later_epoch
    seed_style_estimate = plain_seconds * _EPOCHS.value
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPU cores, "
          f"TensorFlow {tf.__version__}; {size} px, batch {batch}, {len(files)} training and "
          f"{len(validation)} validation images, weights {_WEIGHTS.value}\n")
    print("| measurement | value | ratio |")
    print("|---|---:|---:|")
    print(f"| training images/s, in-memory ceiling | {ceiling:.1f} | 1.00 |")
    print(f"| training images/s, catdog tf.data pipeline | {pipeline:.1f} | "
          f"{pipeline / ceiling:.2f} of ceiling |")
    print(f"| training images/s, seed's ImageDataGenerator | {seed_path:.1f} | "
          f"{seed_path / ceiling:.2f} of ceiling |")
    print(f"| {_EPOCHS.value}-epoch head training on images, validating on images every epoch "
          f"(the seed's way; 1-epoch run: {plain_seconds:.0f} s) | {seed_style_estimate:.0f} s "
          f"(extrapolated) | {seed_style_estimate / cached_seconds:.1f}x the cached run |")
    print(f"| {_EPOCHS.value}-epoch head training on images, catdog (1- and 2-epoch runs: "
          f"{plain_seconds:.0f} s, {two_epochs_seconds:.0f} s) | {plain_estimate:.0f} s "
          f"(extrapolated) | {plain_estimate / cached_seconds:.1f}x the cached run |")
    print(f"| {_EPOCHS.value}-epoch head training, --cache_features (run in full) | "
          f"{cached_seconds:.0f} s | 1.00 |")
    print(f"| best val_accuracy after 1 epoch on images / {_EPOCHS.value} on cached features | "
          f"{plain.summary['best_val_accuracy']:.4f} / {cached.summary['best_val_accuracy']:.4f}"
          " | |")
    print(f"| evaluation images/s (exported .h5, batch 32) | "
          f"{len(validation) / eval_seconds:.1f} | |")


if __name__ == "__main__":
    app.run(main)
