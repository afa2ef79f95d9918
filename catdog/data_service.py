"""TensorFlow's tf.data service servers, for --data_service: `python -m catdog.data_service`.

    python -m catdog.data_service dispatcher --port=5050
    python -m catdog.data_service worker --dispatcher=host:5050 --port=5051   # on each input CPU
    python -m catdog.train ... --data_service=grpc://host:5050

The workers run catdog's training input pipeline (read, decode, batch) for the trainer, so the
first epoch of a large dataset is decoded on as many CPUs as there are workers rather than on the
trainer's own. They must see the image files at the paths the trainer lists.

TensorFlow's data service has no authentication and runs whatever dataset graph a client sends
(a `map` that writes files included), and TensorFlow 2.21 listens on every interface
(`0.0.0.0:<port>`, server_lib.cc) with no option to bind one address. catdog cannot narrow
that, so it starts the servers only when `--host=0.0.0.0` says the machine is on a network
where only trainers can reach it (deploy/data-service.yaml's NetworkPolicy); the default
`--host=127.0.0.1` refuses in one line. The dispatcher's journal (which holds the registered
dataset graphs) is private to its user (0700) and removed when the dispatcher ends cleanly.
"""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from catdog.errors import CatdogError

PROTOCOL = "grpc"


WORKER_TIMEOUT_SECONDS = 10
JOURNAL_PARTS = ("tf_data_dispatcher_journal", "datasets")  # what TensorFlow writes in work_dir


def private_folder(path: str | Path) -> Path:
    """`path`, created if missing and made private to this user (0700); one that belongs to
    another user is refused (a shared temporary folder's name taken first)."""
    folder = Path(path)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if folder.stat().st_uid != os.getuid():
            raise CatdogError(f"--work_dir: {folder} belongs to another user; name a folder "
                              "of your own")
        folder.chmod(0o700)
    except OSError as error:
        raise CatdogError(f"--work_dir: cannot use {folder}: {error.strerror}") from None
    return folder


def remove_journal(work_dir: Path) -> None:
    """What TensorFlow wrote in a dispatcher's `work_dir` (and the folder, if then empty)."""
    for part in JOURNAL_PARTS:
        shutil.rmtree(work_dir / part, ignore_errors=True)
    with contextlib.suppress(OSError):
        work_dir.rmdir()


def default_work_dir(port: int) -> Path:
    """Where a dispatcher on `port` keeps its journal unless --work_dir says otherwise: the same
    folder for the same port, so a dispatcher restarted on its port finds its jobs again."""
    return Path(tempfile.gettempdir()) / f"catdog-dispatcher-{port}"


def start_dispatcher(port: int, work_dir: str | Path | None = None,
                     worker_timeout_seconds: float = WORKER_TIMEOUT_SECONDS
                     ) -> tf.data.experimental.service.DispatchServer:
    """A dispatcher on `port` (0: a free one), started. With `work_dir` it is fault tolerant, as
    TensorFlow defines it: its state (datasets, jobs, which splits were handed out) is written
    to a journal there before it answers, and a dispatcher restarted on the same folder carries
    on where it stopped, with trainers and workers reconnecting. A worker that sends no
    heartbeat for `worker_timeout_seconds` is dropped, and its unfinished splits with it
    (DYNAMIC sharding reads each image at most once: the epoch misses them)."""
    return tf.data.experimental.service.DispatchServer(
        tf.data.experimental.service.DispatcherConfig(
            port=port, protocol=PROTOCOL, work_dir=str(work_dir) if work_dir else None,
            fault_tolerant_mode=bool(work_dir),
            worker_timeout_ms=int(worker_timeout_seconds * 1000)))


def start_worker(dispatcher: str, port: int = 0,
                 worker_address: str = "") -> tf.data.experimental.service.WorkerServer:
    """A worker on `port` registered with the dispatcher at host:port, started; it tells the
    dispatcher `worker_address` (host:port the trainer can reach; default localhost:port)."""
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=dispatcher.removeprefix(f"{PROTOCOL}://"), port=port,
        protocol=PROTOCOL, worker_address=worker_address or None)
    return tf.data.experimental.service.WorkerServer(config)


def dispatcher_answers(service: str, seconds: float = 2.0) -> bool:
    """Whether something accepts connections at the dispatcher's host:port."""
    host, _, port = service.removeprefix(f"{PROTOCOL}://").rpartition(":")
    try:
        with socket.create_connection((host or "localhost", int(port)), timeout=seconds):
            return True
    except (OSError, ValueError):
        return False


def stop_on_sigterm() -> threading.Event:
    """An event that SIGTERM sets. Installed before a server says it is ready, so a SIGTERM sent
    on reading that line stops it cleanly instead of killing it."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop


def serve_until_stopped(server, stop: threading.Event) -> None:
    """Blocks until `stop` is set or Ctrl-C, then stops `server`. Waits in short steps: a
    signal that the kernel delivers to one of TensorFlow's threads does not wake a main thread
    blocked in one long wait, so its Python handler would never run (grpc's
    wait_for_termination waits the same way)."""
    try:
        while not stop.wait(0.1):
            pass
    except KeyboardInterrupt:
        pass
    server.stop()


def main(argv: Sequence[str]) -> None:
    from absl import flags

    f = flags.FLAGS
    role = argv[1:]
    work_dir = None
    stop = stop_on_sigterm()
    if role == ["dispatcher"]:
        # --port=0 picks a new port each time, so there is no address to restart at
        work_dir = f.work_dir or (default_work_dir(f.port) if f.port else None)
        if work_dir:
            work_dir = private_folder(work_dir)
        server = start_dispatcher(f.port, work_dir, f.worker_timeout_seconds)
        journal = (f"journal in {work_dir}: a restart on the same port and --work_dir resumes "
                   "its jobs" if work_dir else "no journal: not restartable")
        print(f"tf.data service dispatcher at {server.target} ({journal})", flush=True)
    elif role == ["worker"]:
        if not f.dispatcher:
            raise CatdogError("worker needs --dispatcher=host:port")
        server = start_worker(f.dispatcher, f.port, f.worker_address)
        print(f"tf.data service worker on port {f.port or '(any)'} for {f.dispatcher}", flush=True)
    else:
        from catdog.commands import DATA_SERVICE_USAGE

        raise CatdogError(f"usage: python -m catdog.data_service {DATA_SERVICE_USAGE}")
    serve_until_stopped(server, stop)
    if work_dir:  # a clean end: its jobs are over, and the journal holds their graphs
        remove_journal(work_dir)
    sys.exit(0)


def run() -> None:
    """The `catdog-data-service` console script (and `python -m catdog.data_service`)."""
    from catdog import cli

    cli.run_command("data_service", main)


if __name__ == "__main__":
    run()
