"""Shared fixtures: small generated image folders and a way to run catdog's CLIs in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("cats", "dogs")
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
