"""Input pipeline benchmark: the seed's ImageDataGenerator path vs catdog's tf.data pipeline.

    pip install -e '.[bench]'
    python benchmarks/input_pipeline.py --data_dir=../shared/datasets/cats_vs_dogs

Measures, in one process, at the seed's settings (150 px, batch 16), images/s of
  (a) the seed's input path: ImageDataGenerator(rescale=1/255, shear 0.2, zoom 0.2, horizontal
      flip).flow_from_directory,
  (b) catdog's tf.data pipeline (parallel decode, cache, seeded shuffle, batch, prefetch), its
      first pass (decoding) and a cached pass,
each alone and feeding frozen-VGG16 training steps, and (c) the same training steps on one
in-memory batch (the compute ceiling). Feeding runs use catdog's own distributed train step;
the seed's batches go through it without augmentation layers, since the generator augments.
"""

from __future__ import annotations

import itertools
import math
import os
import platform
import time
from collections.abc import Iterable, Iterator

import tensorflow as tf
from absl import app, flags

from catdog import data, distribute
from catdog.config import Config
from catdog.inputs import Source
from catdog.steps import Trainer

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/datasets/cats_vs_dogs",
                                "Dataset with train/ and validation/.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 150, "Image side in pixels.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Batch size.")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed training steps per variant.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed training steps before timing.")


def images_per_second(batches: Iterable, count: int) -> float:
    """Images/s over the first `count` batches drawn from `batches`."""
    start, images = time.perf_counter(), 0
    for batch in itertools.islice(batches, count):
        images += len(batch[0])
    return images / (time.perf_counter() - start)


def seed_generator_batches(train_dir: str, image_size: int, batch_size: int) -> Iterator:
    """The seed notebook's training input, exactly as it built it."""
    generator = tf.keras.preprocessing.image.ImageDataGenerator(
        rescale=1.0 / 255, shear_range=0.2, zoom_range=0.2, horizontal_flip=True)
    return generator.flow_from_directory(train_dir, target_size=(image_size, image_size),
                                         batch_size=batch_size, class_mode="categorical")


def as_tensors(batches: Iterable) -> Iterator:
    """(images, one-hot) numpy batches → (float32 images, int32 labels) tensors."""
    for images, one_hot in batches:
        yield tf.constant(images, tf.float32), tf.constant(one_hot.argmax(axis=1), tf.int32)


def training_images_per_second(trainer: Trainer, batches: Iterable, warmup: int,
                               steps: int) -> float:
    """Images/s of `steps` train steps fed from `batches`, after `warmup` untimed steps."""
    iterator = iter(batches)
    for batch in itertools.islice(iterator, warmup):
        trainer.train_steps[Source.IMAGES](batch)
    trainer.train_loss.result().numpy()  # waits for the warm-up steps to finish
    start, images = time.perf_counter(), 0
    for batch in itertools.islice(iterator, steps):
        trainer.train_steps[Source.IMAGES](batch)
        images += len(batch[0])
    trainer.train_loss.result().numpy()
    return images / (time.perf_counter() - start)


def main(argv):
    del argv
    size, batch = _IMAGE_SIZE.value, _BATCH_SIZE.value
    train_dir = os.path.join(_DATA_DIR.value, "train")
    config = Config(data_dir=_DATA_DIR.value, image_size=size, batch_size=batch, weights="none")
    distribution = distribute.setup_distribution(config)
    augmenting = Trainer(config, 2, distribution)
    plain = Trainer(Config(data_dir=_DATA_DIR.value, image_size=size, batch_size=batch,
                                 weights="none", flip="none", zoom=0.0), 2, distribution)
    files, _ = data.find_splits(_DATA_DIR.value, 0.0, seed=0)
    epoch_batches = math.ceil(len(files) / batch)

    rows = []
    seed_alone = images_per_second(seed_generator_batches(train_dir, size, batch), epoch_batches)
    decoded = data.decoded_images(files, size)
    cold = images_per_second(data.batches(decoded, batch, shuffle_seed=1), epoch_batches)
    warm = images_per_second(data.batches(decoded, batch, shuffle_seed=2), epoch_batches)
    rows.append(("(a) seed ImageDataGenerator, alone", seed_alone))
    rows.append(("(b) catdog tf.data, alone, first pass (decode)", cold))
    rows.append(("(b) catdog tf.data, alone, cached pass", warm))

    steps, warmup = _STEPS.value, _WARMUP.value
    seed_train = training_images_per_second(
        plain, as_tensors(seed_generator_batches(train_dir, size, batch)), warmup, steps)
    fresh = data.decoded_images(files, size)  # an empty cache, as in a run's first epoch
    catdog_train = training_images_per_second(
        augmenting, data.batches(fresh, batch, shuffle_seed=3), warmup, steps)
    in_memory = next(iter(data.batches(decoded, batch)))
    ceiling = training_images_per_second(
        augmenting, itertools.repeat(in_memory), warmup, steps)
    rows.append(("(a) seed ImageDataGenerator → training steps", seed_train))
    rows.append(("(b) catdog tf.data → training steps", catdog_train))
    rows.append(("(c) in-memory batch → training steps (ceiling)", ceiling))

    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPU cores, "
          f"TensorFlow {tf.__version__}; {size} px, batch {batch}, {len(files)} training "
          f"images; training rows: {steps} timed steps after {warmup} warm-up steps\n")
    print("| path | images/s | ratio to (c) |")
    print("|---|---:|---:|")
    for name, value in rows:
        print(f"| {name} | {value:.1f} | {value / ceiling:.2f} |")


if __name__ == "__main__":
    app.run(main)
