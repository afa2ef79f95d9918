"""Serving benchmark: REST and gRPC latency and throughput against the in-process signature call.

    python benchmarks/serving.py --model_base_path=export/catdog \
        --images=../shared/datasets/cats_vs_dogs/validation/cats

Starts `catdog.serve` on free loopback ports in this process, sends one JPEG per request (the
images resized to --image_px first, as a client would upload them) with 1 and 8 concurrent
clients, and prints p50/p99 latency and throughput next to calling the SavedModel's
`serving_default` signature in-process on the same images; the ratio is the serving overhead.
gRPC is measured twice more with --enable_batching (serving/batching.config), off and on side
by side, since batching trades a little latency for throughput under concurrency.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import platform
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import app, flags
from tensorflow_serving.apis import model_pb2

from catdog import contract
from catdog.serving.client import Client
from catdog.serving.server import start_server

_BASE = flags.DEFINE_string("model_base_path", "export/catdog", "SavedModel versions to serve.")
_IMAGES = flags.DEFINE_string("images", "../shared/datasets/cats_vs_dogs/validation/cats",
                              "Folder of JPEGs to send.")
_IMAGE_PX = flags.DEFINE_integer("image_px", 150, "Side the JPEGs are resized to before sending.")
_REQUESTS = flags.DEFINE_integer("requests", 48, "Requests per row (spread over the clients).")
_BATCHING = flags.DEFINE_string("batching_parameters_file", "serving/batching.config",
                                "BatchingParameters for the batching rows.")


def jpeg_payloads(folder: str, count: int, side: int) -> list[bytes]:
    paths = sorted(Path(folder).glob("*.jpg"))[:count]
    payloads = []
    for path in paths:
        image = tf.io.decode_jpeg(path.read_bytes(), channels=3)
        resized = tf.cast(tf.image.resize(image, [side, side], antialias=True), tf.uint8)
        payloads.append(tf.io.encode_jpeg(resized, quality=90).numpy())
    return payloads


def measure(call, payloads: list[bytes], clients: int, requests: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, requests/s) of `requests` calls spread over `clients` threads."""
    jobs = list(itertools.islice(itertools.cycle(payloads), requests))

    def timed(payload):
        start = time.perf_counter()
        call(payload)
        return time.perf_counter() - start

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(timed, jobs))
    elapsed = time.perf_counter() - start
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    return p50, p99, requests / elapsed


def main(argv):
    del argv
    payloads = jpeg_payloads(_IMAGES.value, 16, _IMAGE_PX.value)
    server = start_server("catdog", _BASE.value, port=0, rest_api_port=0)
    batching = start_server("catdog", _BASE.value, port=0, rest_api_port=None,
                            enable_batching=True,
                            batching_parameters_file=_BATCHING.value)
    version = server.core.servable(model_pb2.ModelSpec(name="catdog"))
    signature = tf.saved_model.load(str(version.path)).signatures[contract.SERVING_DEFAULT]
    in_process = lambda payload: signature(image_bytes=tf.constant([payload]))  # noqa: E731
    urls = {"gRPC": f"grpc://127.0.0.1:{server.grpc_port}",
            "REST": f"http://127.0.0.1:{server.rest_port}",
            "gRPC, batching on": f"grpc://127.0.0.1:{batching.grpc_port}"}
    clients = {name: Client(url, "catdog", timeout=120) for name, url in urls.items()}
    rows = []
    try:
        for name, call in [("in-process signature", in_process)] + [
                (name, lambda payload, c=c: c.predict([payload])) for name, c in clients.items()]:
            measure(call, payloads, 1, 4)  # warm-up
            for concurrency in (1, 8):
                rows.append((name, concurrency,
                             *measure(call, payloads, concurrency, _REQUESTS.value)))
    finally:
        for client in clients.values():
            client.close()
        server.stop()
        batching.stop()

    baseline = {c: rps for name, c, _, _, rps in rows if name == "in-process signature"}
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPU cores, "
          f"TensorFlow {tf.__version__}; model {version.path}; one {_IMAGE_PX.value} px JPEG "
          f"(~{np.mean([len(p) for p in payloads]) / 1024:.0f} KiB) per request, "
          f"{_REQUESTS.value} requests per row\n")
    print("| path | clients | p50 ms | p99 ms | requests/s | ratio to in-process |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, concurrency, p50, p99, rps in rows:
        print(f"| {name} | {concurrency} | {p50:.1f} | {p99:.1f} | {rps:.1f} | "
              f"{rps / baseline[concurrency]:.2f} |")


if __name__ == "__main__":
    app.run(main)
