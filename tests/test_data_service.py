"""catdog.data_service and --data_service: a dispatcher and two workers on 127.0.0.1 feed the
training batches, each image once per epoch, and a run trains on them as on local input."""

import collections
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from catdog import data, data_service, train
from catdog.config import Config
from catdog.errors import CatdogError

from conftest import free_ports, run_catdog


@pytest.fixture(scope="module")
def service():
    dispatcher = data_service.start_dispatcher(0)
    workers = [data_service.start_worker(dispatcher.target) for _ in range(2)]
    yield dispatcher.target
    # The dispatcher first: a worker stopped while its dispatcher lived sometimes took 5-20 s
    # to stop (2 runs in 4 here); after it, at most 2 s (1 in 6).
    for server in [dispatcher, *workers]:
        server.stop()


def test_each_training_image_comes_once_per_epoch(service, dataset_dir):
    files, _ = data.find_splits(dataset_dir, 0.0, seed=0)
    counts = collections.Counter()
    for epoch in (1, 2):
        for images, labels in data.service_batches(files, 32, 5, epoch, service):
            assert images.shape[1:] == (32, 32, 3) and images.dtype.name == "float32"
            counts.update(np.asarray(images).reshape(len(labels), -1).sum(axis=1).round(2))
    per_image = collections.Counter(counts.values())
    assert sum(counts.values()) == 2 * len(files)
    assert set(per_image) == {2}, per_image  # every image twice in two epochs, none more


@pytest.mark.slow
def test_a_run_trains_on_the_service_as_on_local_input(service, dataset_dir, tmp_path):
    """At a learning rate too small to move the weights, an epoch's mean training loss is the
    mean over every training image of the untrained model's loss, whatever the order and
    batching: equal on both inputs only if the workers fed each image exactly once."""
    settings = dict(data_dir=str(dataset_dir), weights="none", image_size=32, batch_size=8,
                    epochs=1, flip="none", zoom=0.0, seed=5, strategy="default",
                    mixed_precision="float32", learning_rate=1e-9, publish="never")
    local = train.train(Config(**settings, run_dir=str(tmp_path / "local"),
                               export_dir=str(tmp_path / "local-export")))
    served = train.train(Config(**settings, data_service=service,
                                run_dir=str(tmp_path / "served"),
                                export_dir=str(tmp_path / "served-export")))
    a, b = local.summary["epochs"][0], served.summary["epochs"][0]
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert b[metric] == pytest.approx(a[metric], abs=1e-5), metric


def test_prepared_shards_come_once_per_epoch_too(service, dataset_dir, tmp_path):
    from catdog import prepare

    prepare.prepare(dataset_dir, tmp_path / "prepared", 32, shard_images=6)
    files, _ = data.prepared_splits(tmp_path / "prepared", 32)
    seen = collections.Counter()
    for images, labels in data.service_batches(files, 32, 5, 1, service):
        seen.update(np.asarray(images).reshape(len(labels), -1).sum(axis=1).round(2))
    assert sum(seen.values()) == len(files) and set(seen.values()) == {1}


# --- faults: a lost worker or dispatcher ends or continues the run within a bound ----------

class Service:
    """A dispatcher (fault tolerant, journal in `work_dir`) and two workers, each a
    `python -m catdog.data_service` process of its own, so that a test can kill one."""

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self.port, *self.worker_ports = free_ports(3)
        # All three start at once (a worker retries until its dispatcher answers), each waited
        # for by its start line.
        self.dispatcher = self._spawn("dispatcher", f"--port={self.port}",
                                      f"--work_dir={work_dir}", "--worker_timeout_seconds=2")
        self.workers = [self._spawn("worker", f"--dispatcher=localhost:{self.port}",
                                    f"--port={port}") for port in self.worker_ports]
        for role, process in (("dispatcher", self.dispatcher),
                              *(("worker", worker) for worker in self.workers)):
            self._started(role, process)

    @property
    def target(self) -> str:
        return f"grpc://localhost:{self.port}"

    @staticmethod
    def _spawn(role: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "catdog.data_service", role,
                                 "--host=0.0.0.0", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    @staticmethod
    def _started(role: str, process: subprocess.Popen) -> None:
        assert process.stdout.readline().startswith(f"tf.data service {role}")

    def restart_dispatcher(self) -> None:
        self.dispatcher = self._spawn("dispatcher", f"--port={self.port}",
                                      f"--work_dir={self.work_dir}", "--worker_timeout_seconds=2")
        self._started("dispatcher", self.dispatcher)

    def stop(self) -> None:
        for process in [*self.workers, self.dispatcher]:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture
def fault_service(tmp_path):
    service = Service(tmp_path / "journal")
    yield service
    service.stop()


def _train_until(service: Service, dataset: Path, tmp_path: Path, timeout: float,
                 epochs: int = 30) -> tuple[subprocess.Popen, list[str]]:
    """A run on the service, returned once it has logged `Epoch 2/<epochs>` (what the test
    does next lands mid-run: the epoch takes seconds, and more follow)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "catdog.train", f"--data_dir={dataset}", "--weights=none",
         "--image_size=32", "--batch_size=4", f"--epochs={epochs}", "--flip=none", "--zoom=0",
         "--mixed_precision=float32", "--publish=never", f"--data_service={service.target}",
         f"--data_service_timeout_seconds={timeout}", f"--run_dir={tmp_path / 'run'}",
         f"--export_dir={tmp_path / 'export'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    seen = []
    for line in process.stderr:
        seen.append(line)
        if f"Epoch 2/{epochs}" in line:
            return process, seen
    pytest.fail("".join(seen))


def _rest_of_output(process: subprocess.Popen, seconds: float) -> tuple[int, str]:
    """The exit status and the rest of stderr of a run that must end within `seconds`; one
    that does not is killed and the test fails (a hang)."""
    timer = threading.Timer(seconds, process.kill)
    timer.start()
    rest = process.stderr.read()
    timer.cancel()
    status = process.wait()
    assert status != -signal.SIGKILL, f"still running after {seconds} s:\n{rest[-3000:]}"
    return status, rest


@pytest.mark.slow
def test_a_worker_killed_mid_run_ends_or_continues_the_run_within_the_bound(
        fault_service, dataset_dir, tmp_path):
    """Either outcome is catdog's: the run goes on with the other worker (an epoch that lost
    splits with the killed worker says how many images it missed), or it stops in one line
    within --data_service_timeout_seconds. It never hangs: 4 epochs of a few seconds remain."""
    process, _ = _train_until(fault_service, dataset_dir, tmp_path, timeout=20, epochs=6)
    fault_service.workers[0].kill()
    status, rest = _rest_of_output(process, 20 + 120)
    assert "Traceback" not in rest
    if status == 0:
        assert "Epoch 6/6" in rest and "unpublished" in rest, rest
        for missed in re.findall(r"delivered (\d+) of (\d+) training images", rest):
            assert int(missed[0]) < int(missed[1]) == 32
    else:
        assert status == 2, rest
        (line,) = [line for line in rest.splitlines() if line.startswith("error:")]
        assert "no training batch from the tf.data service" in line and "resume" in line


@pytest.mark.slow
def test_a_lost_dispatcher_stops_the_run_in_one_line_within_the_bound(
        fault_service, dataset_dir, tmp_path):
    process, _ = _train_until(fault_service, dataset_dir, tmp_path, timeout=10)
    fault_service.dispatcher.kill()
    status, rest = _rest_of_output(process, 10 + 120)
    assert status == 2, rest  # the next epoch's job needs it
    errors = [line for line in rest.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "its dispatcher does not answer" in errors[0], rest
    assert "Traceback" not in rest


@pytest.mark.slow
def test_a_restarted_dispatcher_resumes_its_jobs_and_the_run_goes_on(
        fault_service, dataset_dir, tmp_path):
    """The dispatcher is killed during epoch 2 of 4 (epochs of a few seconds): epochs 3 and 4
    need the restarted dispatcher's jobs."""
    process, _ = _train_until(fault_service, dataset_dir, tmp_path, timeout=120, epochs=4)
    fault_service.dispatcher.kill()
    fault_service.dispatcher.wait(timeout=30)
    fault_service.restart_dispatcher()  # the same port and journal
    status, rest = _rest_of_output(process, 600)
    assert status == 0, rest
    assert "Epoch 4/4" in rest and "Traceback" not in rest


@pytest.mark.slow
def test_sigterm_stops_a_run_whose_service_is_lost(fault_service, dataset_dir, tmp_path):
    """The dispatcher is killed mid-epoch and the bound is far away, so the run is waiting on
    the service (or about to): SIGTERM stops it at once with the usual line."""
    process, _ = _train_until(fault_service, dataset_dir, tmp_path, timeout=600)
    fault_service.dispatcher.kill()
    fault_service.dispatcher.wait(timeout=30)
    process.send_signal(signal.SIGTERM)
    status, rest = _rest_of_output(process, 60)
    assert status == 130, rest
    assert re.search(r"interrupted: epoch \d+ of 30 is saved in", rest), rest


@pytest.mark.parametrize("role", ["dispatcher", "worker"])
def test_default_flags_start_no_server_and_say_why(role):
    """TensorFlow's data service listens on every interface and runs any graph it is sent: with
    the default --host nothing listens, and one line says what --host=0.0.0.0 would mean."""
    port, = free_ports(1)
    result = run_catdog("data_service", role, f"--port={port}", "--dispatcher=localhost:1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: flag --host=127.0.0.1: TensorFlow's data service listens on "
                           "every interface (0.0.0.0) and cannot be bound to one address; it has "
                           "no authentication and runs any dataset graph a client sends.")
    assert not data_service.dispatcher_answers(f"localhost:{port}", seconds=0.5)


def test_the_journal_is_private_and_gone_after_a_clean_end(tmp_path):
    port, = free_ports(1)
    work_dir = tmp_path / "journal"
    process = subprocess.Popen(
        [sys.executable, "-m", "catdog.data_service", "dispatcher", "--host=0.0.0.0",
         f"--port={port}", f"--work_dir={work_dir}"], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    assert process.stdout.readline().startswith("tf.data service dispatcher")
    assert oct(work_dir.stat().st_mode & 0o777) == "0o700"
    assert (work_dir / "tf_data_dispatcher_journal").is_dir()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not work_dir.exists()


def test_a_journal_folder_is_made_private_and_another_users_is_refused(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    assert data_service.private_folder(shared) == shared
    assert oct(shared.stat().st_mode & 0o777) == "0o700"
    monkeypatch.setattr(os, "getuid", lambda: 12345)  # as if another user had made it
    with pytest.raises(CatdogError, match=r"^--work_dir: .*/shared belongs to another user"):
        data_service.private_folder(shared)
