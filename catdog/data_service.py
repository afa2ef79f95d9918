"""TensorFlow's tf.data service servers, for --data_service: `python -m catdog.data_service`.

    python -m catdog.data_service dispatcher --port=5050
    python -m catdog.data_service worker --dispatcher=host:5050 --port=5051   # on each input CPU
    python -m catdog.train ... --data_service=grpc://host:5050

The workers run catdog's training input pipeline (read, decode, batch) for the trainer, so the
first epoch of a large dataset is decoded on as many CPUs as there are workers rather than on the
trainer's own. They must see the image files at the paths the trainer lists.
"""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import signal
import sys
import threading
from collections.abc import Sequence

import tensorflow as tf

from catdog.errors import CatdogError

PROTOCOL = "grpc"


def start_dispatcher(port: int) -> tf.data.experimental.service.DispatchServer:
    """A dispatcher on `port` (0: a free one), started."""
    return tf.data.experimental.service.DispatchServer(
        tf.data.experimental.service.DispatcherConfig(port=port, protocol=PROTOCOL))


def start_worker(dispatcher: str, port: int = 0,
                 worker_address: str = "") -> tf.data.experimental.service.WorkerServer:
    """A worker on `port` registered with the dispatcher at host:port, started; it tells the
    dispatcher `worker_address` (host:port the trainer can reach; default localhost:port)."""
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=dispatcher.removeprefix(f"{PROTOCOL}://"), port=port,
        protocol=PROTOCOL, worker_address=worker_address or None)
    return tf.data.experimental.service.WorkerServer(config)


def serve_until_stopped(server) -> None:
    """Blocks until SIGTERM or Ctrl-C, then stops `server`."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.stop()


def main(argv: Sequence[str]) -> None:
    from absl import flags

    f = flags.FLAGS
    role = argv[1:]
    if role == ["dispatcher"]:
        server = start_dispatcher(f.port)
        print(f"tf.data service dispatcher at {server.target}", flush=True)
    elif role == ["worker"]:
        if not f.dispatcher:
            raise CatdogError("worker needs --dispatcher=host:port")
        server = start_worker(f.dispatcher, f.port, f.worker_address)
        print(f"tf.data service worker on port {f.port or '(any)'} for {f.dispatcher}", flush=True)
    else:
        raise CatdogError("usage: python -m catdog.data_service dispatcher|worker [--port=N] "
                          "[--dispatcher=host:port]")
    serve_until_stopped(server)
    sys.exit(0)


def run() -> None:
    """The `catdog-data-service` console script (and `python -m catdog.data_service`)."""
    from catdog import cli
    from catdog import flags as catdog_flags

    cli.run(main, catdog_flags.define_data_service_flags)


if __name__ == "__main__":
    run()
