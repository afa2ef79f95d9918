"""Label your own photos: `python -m catdog.predict --model=PATH IMAGE_OR_DIR...`.

Prints one line per image, `path<TAB>label<TAB>probability`, or with --format=jsonl one JSON
object per line with every class's probability. Folders are searched for images recursively.
A file that cannot be read gets an error line instead (on stderr for text, as an object with
"error" for jsonl), and the exit status is 1 at the end; the other images are still labelled.
Works on the .h5 and on a SavedModel version folder alike, with equal results.
"""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from catdog import atomic, gradcam, image_formats, images, inference
from catdog.commands import PREDICT_USAGE
from catdog.errors import CatdogError


def predict_paths(classifier: inference.Classifier, paths: Sequence[str], batch_size: int,
                  max_pixels: int = images.MAX_IMAGE_PIXELS) -> Iterator[dict]:
    """One result per path, in order: path, label, probability, probabilities; or path, error."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        pixels, errors = [], {}
        for path in chunk:
            image, problem = _read(path, classifier.image_size, max_pixels)
            if problem:
                errors[path] = problem
                continue
            pixels.append(tf.cast(image, tf.float32).numpy())
        probabilities = iter(classifier.predict(np.stack(pixels)) if pixels else [])
        for path in chunk:
            if path in errors:
                yield {"path": path, "error": errors[path]}
                continue
            yield inference.answer_record(path, classifier.class_names, next(probabilities))


EXPLAINED_SIDE = 512  # the longest side of a written heat-map overlay


def write_explanations(model_path: str, paths: Sequence[str], folder: str | Path,
                       max_pixels: int = images.MAX_IMAGE_PIXELS) -> list[Path]:
    """For each image, `<folder>/<name>.gradcam.png`: the Grad-CAM heat map of the class the
    model predicts (catdog/gradcam.py) over the photo, its longest side at most 512 px."""
    model, _ = inference.load_keras_model(model_path)
    size = model.input_shape[1]
    written, taken = [], set()
    for path in paths:
        encoded = tf.io.read_file(path)
        photo = images.decode_image(encoded, max_pixels)
        pixels = tf.cast(images.resize_image(photo, size), tf.float32).numpy()[None]
        shown = tf.cast(tf.image.resize(photo, (EXPLAINED_SIDE, EXPLAINED_SIDE),
                                        preserve_aspect_ratio=True), tf.uint8).numpy()
        name = f"{Path(path).stem}.gradcam.png"
        for n in range(2, len(paths) + 2):
            if name not in taken:
                break
            name = f"{Path(path).stem}-{n}.gradcam.png"
        taken.add(name)
        target = Path(folder) / name
        with atomic.atomic_file(target) as tmp:
            tf.io.write_file(str(tmp), tf.io.encode_png(
                gradcam.overlay(shown, gradcam.heatmaps(model, pixels)[0])))
        written.append(target)
    return written


def _read(path: str, image_size: int, max_pixels: int):
    """(image, None) or (None, why not); only regular files are opened."""
    if not Path(path).exists():
        return None, "no such file"
    if not Path(path).is_file():
        return None, "not a regular file (a folder, FIFO, socket or device); not read"
    return images.read_checked_image(path, image_size, max_pixels)


USAGE = PREDICT_USAGE


def main(argv: Sequence[str]) -> int:
    from absl import flags

    f = flags.FLAGS
    skipped: list[str] = []
    paths = list(image_formats.image_paths(argv[1:], skipped))
    if skipped:
        print(image_formats.skipped_message(skipped), file=sys.stderr, flush=True)
    if not paths:
        raise CatdogError(f"usage: python -m catdog.predict {USAGE} (no images given or found)")
    classifier = inference.load_classifier(
        f.model, inference.resolve_precision(f.mixed_precision, f.model))
    failures, results = 0, []
    for result in predict_paths(classifier, paths, f.batch_size, f.max_image_pixels):
        results.append(result)
        failures += "error" in result
        if f.format == "jsonl":
            print(json.dumps(result), flush=True)
        elif "error" in result:
            print(f"{result['path']}\terror: {result['error']}", file=sys.stderr, flush=True)
        else:
            print(f"{result['path']}\t{result['label']}\t{result['probability']:.6f}", flush=True)
    if f.explain:
        readable = [r["path"] for r in results if "error" not in r]
        written = write_explanations(f.model, readable, f.explain, f.max_image_pixels)
        print(f"wrote {len(written)} Grad-CAM heat map(s) to {f.explain}", file=sys.stderr)
    return 1 if failures else 0


def run() -> None:
    """The `catdog-predict` console script (and `python -m catdog.predict`)."""
    from catdog import cli

    cli.run_command("predict", main)


if __name__ == "__main__":
    run()
