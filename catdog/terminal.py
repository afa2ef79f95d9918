"""What reaches the screen. Progress of a long loop on a terminal: one line, redrawn in place
and erased when the loop ends, so the log line that follows carries the result once. Anywhere
else (a file, `tee`, CI) it writes nothing at all: no carriage returns, no colour codes; the log
lines around the loop say what started and what it gave. (Keras' Progbar redraws with ANSI
codes even into a file, and leaves its bar beside the epoch's log line.) Also here: stderr set
aside while TensorFlow's native code writes lines catdog shows in its own words, or not at
all."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TextIO

_REDRAW_SECONDS = 0.1  # at most ten redraws a second, however short the steps
_ERASE_LINE = "\r\x1b[K"  # back to column 0, clear to the end of the line


class ProgressLine:
    """`done` of `total` units with the latest metric values, an elapsed time and an estimate of
    the time left, on one line of `stream` (stderr, where the log lines go) if it is a
    terminal."""

    def __init__(self, total: int, unit: str, stream: TextIO | None = None):
        self.total, self.unit, self.done = total, unit, 0
        self.stream = stream or sys.stderr
        self.live = _is_terminal(self.stream)
        self._start = time.monotonic()
        self._drawn_at: float | None = None

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def update(self, done: int, values: Sequence[tuple[str, float]] = ()) -> None:
        """Sets the count of finished units and redraws (at most ten times a second, and always
        for the last unit)."""
        self.done = done
        if not self.live:
            return
        now = time.monotonic()
        if self._drawn_at is not None and now - self._drawn_at < _REDRAW_SECONDS \
                and done < self.total:
            return
        self._drawn_at = now
        self.stream.write(_ERASE_LINE + self.line(now - self._start, values))
        self.stream.flush()

    def add(self, count: int, values: Sequence[tuple[str, float]] = ()) -> None:
        self.update(self.done + count, values)

    def line(self, elapsed: float, values: Sequence[tuple[str, float]] = ()) -> str:
        """The text drawn: `12/40 steps  loss 0.6931  accuracy 0.5000  9s, 21s left`, cut to
        the terminal's width."""
        left = elapsed / self.done * (self.total - self.done) if self.done else None
        parts = [f"{self.done}/{self.total} {self.unit}s",
                 *(f"{name} {value:.4f}" for name, value in values),
                 f"{elapsed:.0f}s" + (f", {left:.0f}s left" if left is not None else "")]
        width = shutil.get_terminal_size(fallback=(100, 24)).columns
        return "  ".join(parts)[:max(width - 1, 10)]

    def close(self) -> None:
        """Erases the line, leaving the cursor at the start of an empty line, so whatever is
        printed next (a log line, the `interrupted:` line) starts on its own."""
        if self.live and self._drawn_at is not None:
            self.stream.write(_ERASE_LINE)
            self.stream.flush()
            self._drawn_at = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


@contextlib.contextmanager
def stderr_set_aside() -> Iterator[list[str]]:
    """Points the process's stderr (file descriptor 2, where TensorFlow's C++ code writes) at a
    temporary file while the body runs; the yielded list then holds the lines written. For
    native lines that would otherwise reach the screen beside catdog's own: TensorFlow's
    start-up notices, libjpeg's reason for a broken JPEG. A process has one stderr, so threads
    take turns (a Beam worker decodes in several)."""
    with _STDERR_TURN:
        yield from _set_aside()


_STDERR_TURN = threading.RLock()


def _set_aside() -> Iterator[list[str]]:
    sys.stderr.flush()
    saved = os.dup(2)
    written: list[str] = []
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield written
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            written.extend(sink.read().decode("utf-8", "replace").splitlines())
