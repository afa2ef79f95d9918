"""Shared fixtures: small generated image folders, a way to run catdog's CLIs in a subprocess,
and the served models that several test modules ask (a small catdog export, TF Serving's test
models), each built once per session."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Tests run with TensorFlow's oneDNN CPU kernels, its default (the serve command turns them off
# for its own process; see catdog/__init__.py), stated here so that no import order can change it.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

CLASSES = ("cats", "dogs")
SERVED_IMAGE_SIZE = 32  # the image size of the `exported` model


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    return buffer.getvalue()


TINY_PNG = _tiny_png()  # a black 1×1 PNG: the smallest valid image request
# The channel each class is tinted towards, so that a small model can learn them in a few steps.
_TINT = {"cats": 0, "dogs": 2}


def class_image(class_name: str, rng: np.random.Generator, size=(40, 48)) -> np.ndarray:
    """A noisy RGB uint8 image tinted towards its class's channel."""
    image = rng.integers(0, 90, (*size, 3), dtype=np.uint8)
    image[..., _TINT[class_name]] += 150
    return image


def write_split(root: Path, per_class: int, seed: int = 0) -> Path:
    """root/<class>/<i>.jpg for every class; returns root."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(class_image(name, rng)).save(folder / f"{name}.{i}.jpg", quality=95)
    return root


@pytest.fixture(autouse=True)
def float32_policy_after_each_test():
    """Keras' global precision policy is float32 again after every test (a test that sets up a
    distribution directly sets it, e.g. to mixed_bfloat16 on a CPU with native bfloat16)."""
    yield
    import keras

    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """A train/ + validation/ dataset of small tinted JPEGs (16 + 6 per class)."""
    root = tmp_path / "dataset"
    write_split(root / "train", 16, seed=1)
    write_split(root / "validation", 6, seed=2)
    return root


@pytest.fixture(scope="module")
def dataset_dir_module(tmp_path_factory) -> Path:
    """The same dataset as `dataset_dir`, shared by a module's tests (which must not change it)."""
    root = tmp_path_factory.mktemp("dataset")
    write_split(root / "train", 16, seed=1)
    write_split(root / "validation", 6, seed=2)
    return root


def fast_config(dataset_dir: Path, root: Path, **overrides):
    """A Config whose epochs take a second: 32 px, random VGG16, cached features. Its export
    stays a candidate (--publish=never): the gate, whose infra validation starts a process of
    its own, is tested in test_publish.py."""
    from catdog.config import Config

    settings = dict(data_dir=str(dataset_dir), weights="none", image_size=32, batch_size=8,
                    epochs=3, flip="none", rotation=0.0, zoom=0.0, cache_features=True,
                    run_dir=str(root / "run"), export_dir=str(root / "export"), seed=3,
                    publish="never")
    return Config(**{**settings, **overrides})


def leftovers(*folders: Path) -> list[Path]:
    """Temporaries anywhere under the folders: catdog's hidden ones and TensorFlow's."""
    return [p for folder in folders if folder.exists() for p in folder.rglob("*")
            if ".tmp-" in p.name or "_temp" in p.name]


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (all bound at once, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_catdog(module: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Runs `python -m catdog.<module> args...` in a fresh interpreter and returns its result;
    `env` adds environment variables."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **kwargs.pop("env", {})}
    return subprocess.run([sys.executable, "-m", f"catdog.{module}", *args], capture_output=True,
                          text=True, env=env, timeout=600, **kwargs)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    """Runs a Python snippet in a fresh interpreter (for reloading exports without shared state)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=600, check=True)


def png_bomb(width: int = 23000, height: int = 23000) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose header declares width × height pixels
    (its data is not all there: a decoder that ignored the header would try to allocate)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body +
                struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
            chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a few MB (root only), grown later with `grow(size)`."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount_point)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"a small disk needs mounting a tmpfs (root): {error}")

    def grow(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)

    yield mount_point, grow
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


# --- served models shared by the serving tests -------------------------------------------------

def save_module(folder: Path, body) -> Path:
    """A SavedModel (not catdog's) whose serving_default runs `body(image_bytes)` and returns
    their lengths: a graph with ops of one's choosing."""
    import tensorflow as tf

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            body(image_bytes)
            return {"probabilities": tf.cast(tf.strings.length(image_bytes), tf.float32)}

    module = Module()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


def writes(target: Path):
    """A body for `save_module` that writes its first input to `target`."""
    import tensorflow as tf

    return lambda image_bytes: tf.io.write_file(str(target), image_bytes[0])



@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """A small classifier and its exports: (model, h5 path, SavedModel base path)."""
    import keras

    from catdog import export
    from catdog import model as model_lib

    keras.utils.set_random_seed(0)
    model = model_lib.build_classifier(len(CLASSES), SERVED_IMAGE_SIZE, "none")
    root = tmp_path_factory.mktemp("export")
    exports = export.export_all(model, CLASSES, root, "catdog")
    return model, exports.h5, exports.saved_model.parent


def garble_warmup(version: Path) -> None:
    """A warm-up record whose request asks for a signature the model does not have."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from catdog import contract

    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
        request=predict_pb2.PredictRequest()))
    log.predict_log.request.model_spec.signature_name = "no_such_signature"
    with tf.io.TFRecordWriter(str(version / contract.WARMUP_FILE)) as writer:
        writer.write(log.SerializeToString())


def copy_version(exported, base: Path, keep_versions: int = 0) -> Path:
    """`exported`'s SavedModel as `base`'s next version, as an export writes it (appearing whole,
    by one rename) but copied rather than exported again; `keep_versions` prunes all but the
    newest, as --keep_versions does. Answers or a gate record kept in the original are not
    copied."""
    from catdog import atomic, versions

    version = base / str(versions.next_number(base))
    with atomic.atomic_dir(version) as tmp:
        shutil.copytree(exported[2] / "1", tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            versions.ANSWERS_DIR, versions.GATE_FILE))
    if keep_versions:
        versions.prune(base, keep_versions)
    return version


@pytest.fixture(scope="session")
def local_server(exported):
    """`exported` served in this process on free ports, requests capped at 256 KB."""
    from catdog.serving.server import start_server

    server = start_server("catdog", exported[2], port=0, rest_api_port=0,
                          max_request_bytes=256 << 10)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def jpegs(tmp_path_factory):
    """Three JPEGs, tinted cat, dog, cat."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(4)
    paths = []
    for i, name in enumerate(["cats", "dogs", "cats"]):
        path = folder / f"{name}{i}.jpg"
        Image.fromarray(class_image(name, rng, size=(60, 45))).save(path, quality=90)
        paths.append(path)
    return paths


def expected_probabilities(model, paths):
    """What `model` answers for these image files, decoded as the serving signatures decode."""
    import tensorflow as tf

    from catdog import images

    pixels = np.stack([
        tf.cast(images.load_image(tf.constant(str(p)), SERVED_IMAGE_SIZE), tf.float32)
        for p in paths])
    return model(pixels, training=False).numpy()


@pytest.fixture(scope="session")
def tfs_models(tmp_path_factory) -> Path:
    """TF Serving's test models (tests/tfserving_models.py), as its tests lay them out."""
    from tfserving_models import write_models

    return write_models(tmp_path_factory.mktemp("tfserving_models"))


@pytest.fixture(scope="session")
def tfs_server(tfs_models):
    """`catdog.serve` over TF Serving's test models with its tests' model and monitoring config."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from catdog.serving.options import ServerOptions
    from catdog.serving.server import start_server

    from tfserving_models import CONFIG, LABELS, TWO_VERSIONS

    config = tfs_models / "models.config"
    config.write_text(CONFIG.format(two=TWO_VERSIONS, root=tfs_models, labels=""))
    monitoring = tfs_models / "monitoring.config"
    monitoring.write_text(
        'prometheus_config: { enable: true, path: "/monitoring/prometheus/metrics" }')
    server = start_server(options=ServerOptions(  # TF Serving's models: not catdog's ops
        port=0, rest_api_port=0, model_config_file=str(config),
        monitoring_config_file=str(monitoring), verify_graph_ops=False))
    server.core.reload_config(text_format.Parse(
        CONFIG.format(two=TWO_VERSIONS, root=tfs_models, labels=LABELS),
        model_server_config_pb2.ModelServerConfig()))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tfs_stubs(tfs_server):
    """(PredictionService, ModelService) gRPC stubs of `tfs_server`."""
    import grpc
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{tfs_server.grpc_port}")
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


@pytest.fixture(scope="session")
def classifier():
    """A small untrained catdog classifier (32 px, random VGG16), for export and signature tests."""
    import keras

    from catdog import model as model_lib

    keras.utils.set_random_seed(0)
    return model_lib.build_classifier(len(CLASSES), image_size=32, weights="none")


@pytest.fixture
def pixels():
    """Whole-number pixels, which survive PNG encoding exactly."""
    return np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype("float32")


# --- `python -m catdog.serve` in its own process, for the hostile-request tests (REST, gRPC) ---

@pytest.fixture(scope="session")
def serve_process(exported):
    """`python -m catdog.serve` of `exported` in its own process, for the hostile-request tests.
    Its environment asks for TensorFlow's oneDNN kernels, which abort a process on some
    malformed inputs (a rank-2 `pixels`, below): the serve command must run without them all the
    same."""
    grpc_port, rest_port = free_ports(2)
    process = subprocess.Popen(
        [sys.executable, "-m", "catdog.serve", "--model_name=catdog",
         f"--model_base_path={exported[2]}",
         f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--max_request_bytes=4194304",
         "--max_request_instances=64", "--max_rest_connections=8"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1"})
    assert process.stdout.readline().startswith("serving catdog")
    yield process, grpc_port, rest_port
    process.terminate()
    process.wait(timeout=30)


def assert_still_serving(serve_process) -> None:
    """The server process is alive and answers a good request over gRPC and REST."""
    from catdog.serving.client import Client

    process, grpc_port, rest_port = serve_process
    assert process.poll() is None, "the server process died"
    for url in (f"grpc://127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"):
        client = Client(url, timeout=30)
        assert client.predict([TINY_PNG])[0].label in CLASSES
        client.close()


def post(local_server, path, body: bytes):
    """POSTs `body` to a running server's REST port: (HTTP status, parsed JSON answer)."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{local_server.rest_port}{path}",
                                     data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def request_with(signature: str, alias: str, proto):
    """A catdog PredictRequest feeding `proto` to `alias` of `signature`."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "catdog", signature
    request.inputs[alias].CopyFrom(proto)
    return request


_HOLD_LOCK = """
import sys
from catdog import atomic
with atomic.exclusive(sys.argv[1], "a folder"):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def lock_held_by_another_process(lock_file: Path) -> Iterator[int]:
    """Another process holds catdog's lock on `lock_file` inside the block; yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(lock_file)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait()
