"""What --test_time_flip costs a served model: the same weights exported with and without it,
each served by `catdog.serve`, one JPEG per gRPC request.

    python benchmarks/test_time_flip.py --model=export/catdog.h5 \
        --images=../shared/datasets/cats_vs_dogs/validation/cats

Writes the two SavedModels into a temporary folder (the flipping one's signatures answer the
mean of each image and its mirror), serves each in turn with `catdog.serve` in this process,
warms it up, sends --requests single-image Predict requests over gRPC, and prints p50 and p99
latency and the ratio, beside the in-process signature call's p50.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/ is on sys.path when this file runs as a script
import tensorflow as tf
from absl import app, flags

from catdog import export, inference
from catdog.serving.client import Client
from catdog.serving.server import start_server

_MODEL = flags.DEFINE_string("model", "export/catdog.h5", "A catdog .h5 to export both ways.")
_IMAGES = flags.DEFINE_string("images", "../shared/datasets/cats_vs_dogs/validation/cats",
                              "Folder of JPEGs to send.")
_REQUESTS = flags.DEFINE_integer("requests", 60, "Requests per model.")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def in_process_p50(version: Path, jpegs: list[bytes]) -> float:
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    serve(image_bytes=tf.constant(jpegs[:1]))
    times = []
    for jpeg in jpegs:
        start = time.perf_counter()
        serve(image_bytes=tf.constant([jpeg]))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv):
    del argv
    model, class_names = inference.load_h5(_MODEL.value)
    jpegs = [p.read_bytes() for p in sorted(Path(_IMAGES.value).glob("*.jpg"))][
        :_REQUESTS.value]
    with tempfile.TemporaryDirectory() as root:
        versions = {name: export.export_saved_model(
            model, class_names, Path(root) / name,
            source={"test_time_flip": True} if name == "flip" else None)
            for name in ("plain", "flip")}
        rows = {}
        for name, version in versions.items():
            server = start_server(name, version.parent, port=0, rest_api_port=None)
            try:
                client = Client(f"grpc://localhost:{server.grpc_port}", model=name)
                client.predict(jpegs[:1])  # warm-up
                times = []
                for jpeg in jpegs:
                    start = time.perf_counter()
                    client.predict([jpeg])
                    times.append(time.perf_counter() - start)
            finally:
                server.stop()
            rows[name] = (percentile(times, 0.5), percentile(times, 0.99),
                          in_process_p50(version, jpegs))
    print(f"\n{time.strftime('%Y-%m-%d')}, {machine.cpu_description()}, TensorFlow "
          f"{tf.__version__}, {len(jpegs)} single-JPEG gRPC requests per model\n")
    print("| export | gRPC p50 | gRPC p99 | in-process signature p50 |")
    print("|---|---:|---:|---:|")
    for name, (p50, p99, local) in rows.items():
        print(f"| {name} | {p50 * 1000:.0f} ms | {p99 * 1000:.0f} ms | {local * 1000:.0f} ms |")
    print(f"\nflip / plain, gRPC p50: {rows['flip'][0] / rows['plain'][0]:.2f}×")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
