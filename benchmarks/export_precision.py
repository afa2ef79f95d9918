"""Is a bfloat16 export worth serving? The same trained weights exported in float32 and in
mixed_bfloat16, compared on a dataset's evaluation photos: how far their answers are apart,
whether their labels and accuracy differ, and how fast each answers, with TensorFlow's oneDNN
kernels on (as `catdog.evaluate` and the gate run) and off (as `catdog.serve` runs, and TF
Serving when started with TF_ENABLE_ONEDNN_OPTS=0).

    python benchmarks/export_precision.py --model=runs/quickstart/export/catdog.h5 \
        --data_dir=../shared/datasets/cats_vs_dogs

--model is a run's .h5 (float32, whatever the run trained in).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/ is on sys.path when this file runs as a script
from absl import app, flags

_MODEL = flags.DEFINE_string("model", None, "A trained run's .h5.")
_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/datasets/cats_vs_dogs", "Photos.")
_EVALUATION_SPLIT = flags.DEFINE_float("evaluation_split", 0.5, "As the run used.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
_SPEED_PHOTOS = flags.DEFINE_integer("speed_photos", 128, "Photos timed without oneDNN.")
_TIME_ONLY = flags.DEFINE_string("time_only", "", "(internal) time this SavedModel on "
                                 "--speed_photos photos and print images/s as JSON.")

POLICIES = ("float32", "mixed_bfloat16")


def evaluation_files(class_names, image_size: int):
    from catdog import evaluation

    return evaluation.folder_photos(_DATA_DIR.value, class_names, image_size,
                                    _EVALUATION_SPLIT.value).files


def answers(version: Path, files) -> tuple[object, float]:
    """Probabilities for every file and images/s of the forward passes (decoding excluded)."""
    import numpy as np

    from catdog import data, inference

    classifier = inference.load_classifier(version)
    batches = [p.numpy() for p, _ in data.batches(
        data.decoded_images(files, classifier.image_size), _BATCH_SIZE.value)]
    classifier.predict(batches[0])  # traced and warmed up
    start = time.perf_counter()
    probabilities = np.concatenate([classifier.predict(b) for b in batches])
    return probabilities, len(files) / (time.perf_counter() - start)


def export(model, class_names, policy: str, root: Path) -> Path:
    from catdog import export as export_lib
    from catdog import model as model_lib

    return export_lib.export_all(model_lib.in_policy(model, policy), class_names, root / policy,
                                 "catdog").saved_model


def time_without_onednn(version: Path) -> float:
    result = subprocess.run(
        [sys.executable, __file__, f"--model={_MODEL.value}", f"--data_dir={_DATA_DIR.value}",
         f"--time_only={version}", f"--speed_photos={_SPEED_PHOTOS.value}"],
        capture_output=True, text=True, env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"})
    if result.returncode:
        sys.exit(result.stderr[-2000:])
    return json.loads(result.stdout.splitlines()[-1])["images_per_second"]


def main(argv: list[str]) -> None:
    del argv
    import numpy as np

    from catdog import data, inference

    model, class_names = inference.load_h5(_MODEL.value)
    files = evaluation_files(class_names, model.input_shape[1])
    if _TIME_ONLY.value:
        few = data.ImageFiles(files.paths[:_SPEED_PHOTOS.value],
                              files.labels[:_SPEED_PHOTOS.value], files.class_names)
        print(json.dumps({"images_per_second": answers(Path(_TIME_ONLY.value), few)[1]}))
        return
    root = Path(tempfile.mkdtemp(prefix="catdog-precision-"))
    found = {}
    for policy in POLICIES:
        version = export(model, class_names, policy, root)
        probabilities, speed = answers(version, files)
        found[policy] = {"probabilities": probabilities, "speed": speed,
                         "speed_without_onednn": time_without_onednn(version),
                         "accuracy": float(np.mean(probabilities.argmax(1) ==
                                                   np.asarray(files.labels)))}
    f32, bf16 = (found[p] for p in POLICIES)
    difference = np.abs(f32["probabilities"] - bf16["probabilities"])
    flipped = int(np.sum(f32["probabilities"].argmax(1) != bf16["probabilities"].argmax(1)))
    print(f"{machine.cpu_description()}; {len(files)} evaluation photos of "
          f"{_DATA_DIR.value}; {_MODEL.value}")
    print("| export | accuracy | images/s, oneDNN on | images/s, oneDNN off |")
    print("|---|---:|---:|---:|")
    for policy in POLICIES:
        r = found[policy]
        print(f"| {policy} | {r['accuracy']:.4f} | {r['speed']:.1f} | "
              f"{r['speed_without_onednn']:.1f} |")
    print(f"bfloat16 against float32: max |Δp| {difference.max():.4f}, mean "
          f"{difference.mean():.4f}; {flipped} of {len(files)} labels differ; speed "
          f"{bf16['speed'] / f32['speed']:.2f}x with oneDNN, "
          f"{bf16['speed_without_onednn'] / f32['speed_without_onednn']:.2f}x without")


if __name__ == "__main__":
    app.run(main)
