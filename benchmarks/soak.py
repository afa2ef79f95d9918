"""Soak test: many clients for minutes while new versions replace the served one.

    python benchmarks/soak.py --model_base_path=export/catdog --clients=12 --seconds=300 \
        --swap_every=30

Copies the newest version under --model_base_path into a scratch base path, serves it with
`python -m catdog.serve` in its own process, and runs --clients threads (half gRPC, half REST),
each sending one JPEG per request, for --seconds. Every --swap_every seconds a new version folder
appears (a copy, renamed into place as an export is) and the older one is deleted, as
`--keep_versions=1` does. Prints requests, failures and p50/p99 latency before the first swap,
within 5 s after a swap, and at other times after it, and the server's RSS after 10 s of traffic
and at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from absl import app, flags

_BASE = flags.DEFINE_string("model_base_path", "export/catdog", "SavedModel versions to copy.")
_IMAGES = flags.DEFINE_string("images", "../shared/datasets/cats_vs_dogs/validation/cats",
                              "Folder of JPEGs to send.")
_CLIENTS = flags.DEFINE_integer("clients", 12, "Concurrent clients (half gRPC, half REST).")
_SECONDS = flags.DEFINE_float("seconds", 300, "How long the clients run.")
_SWAP_EVERY = flags.DEFINE_float("swap_every", 30, "Seconds between new versions.")
_WARM_UP = 10.0  # seconds of traffic before the starting RSS is read
_AFTER_SWAP = 5.0  # a request is "during a swap" if it ends within this many seconds after one


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _new_version(base: Path, source: Path, version: int) -> None:
    """A version appears whole (copied under a hidden name, then renamed); the older go."""
    hidden = base / f".incoming-{version}"
    shutil.copytree(source, hidden)
    os.rename(hidden, base / str(version))
    for old in base.iterdir():
        if old.name.isdigit() and int(old.name) < version:
            shutil.rmtree(old)


def _start_server(base: Path) -> tuple[subprocess.Popen, int, int]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import free_ports

    grpc_port, rest_port = free_ports(2)
    process = subprocess.Popen(
        [sys.executable, "-m", "catdog.serve", "--model_name=catdog", f"--model_base_path={base}",
         f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--file_system_poll_wait_seconds=1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if not process.stdout.readline().startswith("serving"):
        raise SystemExit("the server did not start")
    return process, grpc_port, rest_port


def _client_loop(url: str, images: list[bytes], stop: threading.Event, log: list) -> None:
    from catdog.serving.client import Client
    from catdog.serving.status import ServingError

    client = Client(url, timeout=120, retries=0)
    i = 0
    while not stop.is_set():
        start = time.monotonic()
        try:
            client.predict([images[i % len(images)]])
            ok = True
        except ServingError as error:
            ok = False
            print(f"failed: {error}", file=sys.stderr)
        log.append((time.monotonic(), time.monotonic() - start, ok))
        i += 1
    client.close()


def _phase(end: float, swaps: list[float]) -> str:
    if not swaps or end < swaps[0]:
        return "before swaps"
    if any(0 <= end - s <= _AFTER_SWAP for s in swaps):
        return "during swaps"
    return "after swaps"


def main(argv):
    del argv
    source_base = Path(_BASE.value)
    newest = max((p for p in source_base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    images = [p.read_bytes() for p in sorted(Path(_IMAGES.value).glob("*.jpg"))[:16]]
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) / source_base.name
        base.mkdir()
        _new_version(base, newest, 1)
        process, grpc_port, rest_port = _start_server(base)
        stop, log, swaps = threading.Event(), [], []
        urls = [f"grpc://127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"]
        threads = [threading.Thread(target=_client_loop,
                                    args=(urls[i % 2], images, stop, log))
                   for i in range(_CLIENTS.value)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(min(_WARM_UP, _SECONDS.value))
        rss_start = _rss_mb(process.pid)  # after the first requests' allocations
        version, rss_before_swaps = 1, []
        while time.monotonic() - start < _SECONDS.value:
            time.sleep(max(0.0, min(_SWAP_EVERY.value,
                                    _SECONDS.value - (time.monotonic() - start))))
            # No swap in the last seconds: the end RSS is read with one version loaded.
            if time.monotonic() - start < _SECONDS.value - 2 * _AFTER_SWAP:
                rss_before_swaps.append(_rss_mb(process.pid))
                version += 1
                _new_version(base, newest, version)
                swaps.append(time.monotonic())
        stop.set()
        for thread in threads:
            thread.join()
        rss_end = _rss_mb(process.pid)
        process.terminate()
        process.wait(timeout=60)

    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores; {_CLIENTS.value} clients "
          f"(half gRPC, half REST) for {_SECONDS.value:.0f} s, a new version every "
          f"{_SWAP_EVERY.value:.0f} s ({len(swaps)} swaps), model {newest}\n")
    print("| phase | requests | failed | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for phase in ("before swaps", "during swaps", "after swaps", "all"):
        rows = [(d, ok) for end, d, ok in log if phase == "all" or _phase(end, swaps) == phase]
        if not rows:
            continue
        latencies = np.array([d for d, _ in rows]) * 1000
        p50, p99 = np.percentile(latencies, [50, 99])
        print(f"| {phase} | {len(rows)} | {sum(not ok for _, ok in rows)} | {p50:.0f} | "
              f"{p99:.0f} |")
    print(f"\nserver RSS: {rss_start:.0f} MB at start, {rss_end:.0f} MB at end "
          f"({(rss_end / rss_start - 1) * 100:+.1f}%); before each swap: "
          + ", ".join(f"{r:.0f}" for r in rss_before_swaps) + " MB")


if __name__ == "__main__":
    app.run(main)
