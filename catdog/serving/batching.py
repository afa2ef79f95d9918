"""Server-side batching, as TF Serving's --enable_batching does it for one servable.

Concurrent Predict calls that feed and fetch the same tensors, with inputs equal in every
dimension but the first, are concatenated along dimension 0 into one session run and the outputs
split back. Tasks whose inputs differ in dtype or in any dimension but the first are never
merged. When a merged run fails (one undecodable image fails the whole graph run), each of its
tasks is run alone, so only the offending request gets an error (TF Serving's BatchingSession
fails every task of the batch instead: docs/serving.md). A batch closes when it holds
`max_batch_size` rows or `batch_timeout_micros` after its first task; `num_batch_threads`
batches run at once; at most `max_enqueued_batches` wait, past which a request is refused with
UNAVAILABLE as TF Serving's queue refuses it. With `allowed_batch_sizes`, a batch is padded
(repeating its first row) up to the next allowed size.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import grpc
import numpy as np

from catdog.serving.status import ServingError, invalid

Run = Callable[[Mapping[str, np.ndarray], Sequence[str]], list[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's BatchingParameters with its defaults (batching_session.h)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 4
    allowed_batch_sizes: tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, proto) -> BatchingOptions:
        def value(name):
            return getattr(proto, name).value if proto.HasField(name) else getattr(cls, name)

        options = cls(value("max_batch_size"), value("batch_timeout_micros"),
                      value("max_enqueued_batches"), value("num_batch_threads"),
                      tuple(proto.allowed_batch_sizes))
        if options.allowed_batch_sizes and (
                list(options.allowed_batch_sizes) != sorted(set(options.allowed_batch_sizes))
                or options.allowed_batch_sizes[-1] != options.max_batch_size):
            raise ValueError("allowed_batch_sizes must increase and end with max_batch_size")
        return options


@dataclasses.dataclass
class _Task:
    key: tuple
    feeds: Mapping[str, np.ndarray]
    rows: int
    future: concurrent.futures.Future


class Batcher:
    """Merges concurrent runs of the same feeds and fetches into batched session runs."""

    def __init__(self, run: Run, options: BatchingOptions):
        self._run, self.options = run, options
        self._queue: queue.Queue[_Task | None] = queue.Queue()
        self._pending: list[_Task] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, name=f"batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        self.batches_run = 0
        self.batches_split = 0  # merged runs that failed and were rerun task by task
        for thread in self._threads:
            thread.start()

    def run(self, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]) -> list[np.ndarray]:
        rows = {len(a) if np.ndim(a) else -1 for a in feeds.values()}
        if len(rows) != 1 or -1 in rows:
            return self._run(feeds, fetches)  # not batchable: run alone, as TF Serving would fail
        (count,) = rows
        if count > self.options.max_batch_size:
            raise invalid(f"Task size {count} is larger than maximum input batch size "
                               f"{self.options.max_batch_size}")
        if self.queued_tasks() >= self.options.max_enqueued_batches * self.options.max_batch_size:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "The batch scheduling queue to "
                               "which this task was submitted is full")
        key = (tuple(fetches), tuple(sorted((n, a.dtype.str, a.shape[1:])
                                            for n, a in feeds.items())))
        task = _Task(key, feeds, count, concurrent.futures.Future())
        self._queue.put(task)
        return task.future.result()

    def queued_tasks(self) -> int:
        """Tasks waiting for a batch (not yet taken by a batch thread)."""
        return self._queue.qsize()

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            size = first.rows
            deadline = time.monotonic() + self.options.batch_timeout_micros / 1e6
            while size < self.options.max_batch_size:
                try:
                    task = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if task is None or task.key != first.key or \
                        size + task.rows > self.options.max_batch_size:
                    self._queue.put(task)  # another batch's task (or a stop): it waits
                    break
                batch.append(task)
                size += task.rows
            self._execute(batch, size)

    def _execute(self, batch: list[_Task], size: int) -> None:
        padded = next((s for s in self.options.allowed_batch_sizes if s >= size), size)
        names = list(batch[0].feeds)
        feeds = {}
        for name in names:
            parts = [t.feeds[name] for t in batch]
            if padded > size:
                parts.append(np.repeat(parts[0][:1], padded - size, axis=0))
            feeds[name] = np.concatenate(parts)
        try:
            outputs = self._run(feeds, batch[0].key[0])
            self.batches_run += 1
        except Exception as error:
            if len(batch) == 1:
                batch[0].future.set_exception(error)
            else:  # one bad task must not fail the others: each runs alone
                self.batches_split += 1
                for task in batch:
                    self._run_alone(task)
            return
        start = 0
        for task in batch:
            task.future.set_result([o[start:start + task.rows] for o in outputs])
            start += task.rows

    def _run_alone(self, task: _Task) -> None:
        try:
            task.future.set_result(self._run(task.feeds, task.key[0]))
        except Exception as error:  # this task's own error, and only this task's
            task.future.set_exception(error)
