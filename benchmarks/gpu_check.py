"""GPU check for a user with GPUs: images/s of catdog's training step on synthetic images.

    python benchmarks/gpu_check.py [--steps=200] [--image_size=150] [--batch_size=64]

Trains the frozen-VGG16 head for --steps steps on random 150 px images under float32 and
mixed_float16, with and without XLA, on one GPU and on all GPUs (MirroredStrategy), and prints
images/s and the speed-up over float32 on one GPU. Without a GPU it says so and measures nothing.
"""

from __future__ import annotations

import itertools
import time

import tensorflow as tf
from absl import app, flags

from catdog import distribute, steps
from catdog.config import Config
from catdog.inputs import Source

_STEPS = flags.DEFINE_integer("steps", 200, "Timed training steps per setting.")
_WARMUP = flags.DEFINE_integer("warmup", 10, "Untimed steps first (tracing, XLA compiling).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 150, "Image side in pixels.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Global batch size.")


def images_per_second(config: Config) -> float:
    distribution = distribute.setup_distribution(config)
    trainer = steps.Trainer(config, 2, distribution)
    size, batch = config.image_size, config.batch_size
    images = tf.random.uniform([batch, size, size, 3], 0, 255, seed=1)
    labels = tf.random.uniform([batch], 0, 2, dtype=tf.int32, seed=2)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    batches = iter(distribution.strategy.experimental_distribute_dataset(dataset))
    for _ in range(_WARMUP.value):
        trainer.train_steps[Source.IMAGES](next(batches))
    trainer.train_loss.result().numpy()
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        trainer.train_steps[Source.IMAGES](next(batches))
    trainer.train_loss.result().numpy()
    return _STEPS.value * batch / (time.perf_counter() - start)


def main(argv):
    del argv
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print("no GPU found: nothing to measure (this check is for machines with GPUs)")
        return
    strategies = ["one_device"] + (["mirrored"] if len(gpus) > 1 else [])
    rows = []
    for strategy, precision, jit in itertools.product(
            strategies, ("float32", "mixed_float16"), ("false", "true")):
        config = Config(data_dir="unused", weights="none", image_size=_IMAGE_SIZE.value,
                        batch_size=_BATCH_SIZE.value, strategy=strategy,
                        mixed_precision=precision, jit_compile=jit)
        try:
            rows.append((strategy, precision, jit, images_per_second(config)))
        except Exception as error:  # report a failing setting (e.g. XLA) and go on
            rows.append((strategy, precision, jit, float("nan")))
            print(f"{strategy} {precision} jit={jit} failed: {error}")
    baseline = rows[0][3]
    print(f"\n{len(gpus)} GPU(s): {[tf.config.experimental.get_device_details(g) for g in gpus]}")
    print(f"{_STEPS.value} steps, batch {_BATCH_SIZE.value}, {_IMAGE_SIZE.value} px\n")
    print("| GPUs | precision | XLA | images/s | speed-up |")
    print("|---|---|---|---:|---:|")
    for strategy, precision, jit, rate in rows:
        gpus_used = 1 if strategy == "one_device" else len(gpus)
        print(f"| {gpus_used} | {precision} | {jit} | {rate:.1f} | {rate / baseline:.2f} |")


if __name__ == "__main__":
    app.run(main)
