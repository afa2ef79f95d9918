"""How many input CPUs keep one accelerator fed, per image size and input path: one table.

    python benchmarks/throughput_model.py --data_dir=../shared/datasets/cats_vs_dogs \
        --gpu_images_per_second=150:25000,224:12000

Measured here, on one CPU core each (TensorFlow limited to one thread): JPEG read + decode +
resize images/s (catdog's own `load_image`, what every epoch costs without a cache), prepared
shard read + parse images/s (`python -m catdog.data prepare`: raw pixels, nothing to decode),
and this machine's VGG16 forward images/s with all its cores. The accelerator's VGG16 images/s
is an input (--gpu_images_per_second, per size): it is not measured here. Cores needed = the
accelerator's images/s ÷ one core's images/s on that path. With --cache_features (and feature
views) the input after the feature pass is 512 floats per image: no decoding at all.
"""

from __future__ import annotations

import itertools
import os
import platform
import tempfile
import time

import tensorflow as tf
from absl import app, flags

from catdog import data, images, prepare
from catdog import model as model_lib

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/datasets/cats_vs_dogs",
                                "Dataset with train/ and validation/ class folders.")
_SIZES = flags.DEFINE_list("sizes", ["150", "224"], "Image sizes to model.")
_IMAGES = flags.DEFINE_integer("images", 600, "Images timed per measurement.")
_GPU = flags.DEFINE_list(
    "gpu_images_per_second", ["150:25000", "224:12000"],
    "size:images/s of one accelerator's VGG16 forward pass. An input, not measured here: the "
    "defaults are 40% of an H100's dense bfloat16 peak (990 TFLOP/s) over VGG16's 13.9 and "
    "31 GFLOP per image at 150 and 224 px; put your accelerator's measured figure "
    "(benchmarks/gpu_check.py) instead.")


def images_per_second(dataset: tf.data.Dataset, count: int) -> float:
    """Images/s of iterating `count` elements of `dataset` (after one warm-up element)."""
    iterator = iter(dataset.repeat())
    next(iterator)
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return count / (time.perf_counter() - start)


def single_core(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def jpeg_rate(files: data.ImageFiles, size: int, count: int) -> float:
    paths = tf.data.Dataset.from_tensor_slices(list(files.paths))
    return images_per_second(single_core(paths.map(
        lambda path: images.load_image(path, size))), count)


def shard_rate(files: data.ImageFiles, size: int, count: int) -> float:
    return images_per_second(single_core(data.read_shards(files.shards, size)), count)


def reencoded_rate(files: data.ImageFiles, size: int, count: int) -> float:
    """Decoding the same images re-encoded as JPEG (quality 95) at `size`: the other way to
    store prepared images (about 8× smaller than raw pixels, but decoded every epoch)."""
    encoded = [tf.io.encode_jpeg(image, quality=95).numpy()
               for image, _ in data.decoded_images(files, size)]
    return images_per_second(single_core(tf.data.Dataset.from_tensor_slices(encoded).map(
        lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3))), count)


def vgg16_rate(size: int) -> float:
    extractor = model_lib.feature_extractor(model_lib.build_classifier(2, size, "none"))
    batch = tf.random.uniform([16, size, size, 3], 0, 255)
    forward = tf.function(lambda images: extractor(images, training=False))
    forward(batch).numpy()
    start = time.perf_counter()
    for _ in range(4):
        result = forward(batch)
    result.numpy()
    return 4 * 16 / (time.perf_counter() - start)


def main(argv):
    del argv
    gpu = {int(size): float(rate) for size, rate in (item.split(":") for item in _GPU.value)}
    train_files, _ = data.find_splits(_DATA_DIR.value, 0.0, seed=0)
    step = max(1, len(train_files) // _IMAGES.value)  # every class, evenly
    files = data.ImageFiles(train_files.paths[::step][:_IMAGES.value],
                            train_files.labels[::step][:_IMAGES.value], train_files.class_names)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "source")
        for split, name in itertools.product(("train", "validation"), files.class_names):
            os.makedirs(os.path.join(source, split, name))  # the photos, linked, to prepare
        for (path, label), split in itertools.product(zip(files.paths, files.labels),
                                                      ("train", "validation")):
            os.symlink(path, os.path.join(source, split, files.class_names[label],
                                          os.path.basename(path)))
        for size in map(int, _SIZES.value):
            prepare.prepare(source, os.path.join(tmp, f"prepared{size}"), size)
            shards, _ = data.prepared_splits(os.path.join(tmp, f"prepared{size}"), size)
            rows.append((size, jpeg_rate(files, size, len(files)),
                         reencoded_rate(shards, size, len(files)),
                         shard_rate(shards, size, len(files)), vgg16_rate(size)))
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, TensorFlow {tf.__version__}; {len(files)} photos of "
          f"{_DATA_DIR.value}\n")
    print("| size | images/s per core (measured): source JPEGs | re-encoded JPEG shards | raw "
          "prepared shards | VGG16 forward here, all cores (measured) | accelerator VGG16 "
          "(input) | cores to feed it: source JPEGs | re-encoded | raw shards | feature cache |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, jpeg, reencoded, shard, here in rows:
        target = gpu.get(size)
        needs = (" | ".join(f"{target / rate:.1f}" for rate in (jpeg, reencoded, shard))
                 if target else "– | – | –")
        print(f"| {size} | {jpeg:.0f} | {reencoded:.0f} | {shard:.0f} | {here:.1f} | "
              f"{f'{target:.0f}' if target else '–'} | {needs} | 0 after the feature pass |")


if __name__ == "__main__":
    app.run(main)
