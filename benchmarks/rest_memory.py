"""What one hostile REST body costs the server: peak memory and time to its refusal.

    python benchmarks/rest_memory.py --model_base_path=export/catdog

Starts `python -m catdog.serve` (default flags but the ports) on the model, then sends a
60 MB `predict_pixels` body of 7.5 M pixel triples (under the 64 MiB --max_request_bytes: the
body the fault probes sent), once alone and then four at once, each case to a fresh server.
Prints each case's answers, seconds to the last answer, and the server's peak resident memory
(VmHWM) before and after, against --rest_memory_budget_bytes.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import machine
from absl import app, flags

from catdog.serving.options import DEFAULT_REST_MEMORY_BUDGET

_BASE = flags.DEFINE_string("model_base_path", "export/catdog", "SavedModel versions to serve.")
_TRIPLES = flags.DEFINE_integer("triples", 7_500_000, "Pixel triples in the hostile body.")


def hostile_body(triples: int) -> bytes:
    return (b'{"signature_name": "predict_pixels", "instances": [['
            + b",".join([b"[0,0,0]"] * triples) + b"]]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def post(port: int, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/catdog:predict", body)
    try:
        with urllib.request.urlopen(request, timeout=600) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def run_case(body: bytes, clients: int) -> dict:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "catdog.serve", "--model_name=catdog",
         f"--model_base_path={_BASE.value}", f"--port={free_port()}", f"--rest_api_port={port}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout.readline().startswith("serving catdog")
        before = peak_rss_mb(server.pid)
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            statuses = list(pool.map(lambda _: post(port, body), range(clients)))
        seconds = time.monotonic() - start
        return {"statuses": statuses, "seconds": seconds, "before": before,
                "after": peak_rss_mb(server.pid)}
    finally:
        server.terminate()
        server.wait(timeout=60)


def main(argv):
    del argv
    body = hostile_body(_TRIPLES.value)
    print(f"{time.strftime('%Y-%m-%d')}, {machine.cpu_description()}, budget "
          f"{DEFAULT_REST_MEMORY_BUDGET >> 20} MiB (the default here), body "
          f"{len(body) / 1e6:.1f} MB of {_TRIPLES.value:,} pixel triples\n")
    print("| clients | answers | seconds to the last answer | server peak RSS before → after "
          "(MB) | growth (MB) |")
    print("|---:|---|---:|---:|---:|")
    for clients in (1, 4):
        row = run_case(body, clients)
        print(f"| {clients} | {', '.join(map(str, row['statuses']))} | {row['seconds']:.2f} | "
              f"{row['before']:.0f} → {row['after']:.0f} | {row['after'] - row['before']:.0f} |")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    app.run(main)
