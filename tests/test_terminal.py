"""catdog.terminal: a progress line on a terminal, erased when done; nothing elsewhere."""

import io

import pytest

from catdog.terminal import ProgressLine


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """What a terminal shows for `text`: each line as left by its last carriage return and
    erase-line code (enough for what ProgressLine writes)."""
    return [line.split("\r")[-1].replace("\x1b[K", "") for line in text.split("\n")]


def test_nothing_is_written_where_there_is_no_terminal():
    stream = io.StringIO()  # a file, a pipe, CI
    with ProgressLine(4, "step", stream) as progress:
        for step in range(1, 5):
            progress.update(step, [("loss", 0.5)])
    assert stream.getvalue() == ""


def test_a_terminal_sees_the_count_and_metrics_then_an_empty_line():
    stream = FakeTerminal()
    with ProgressLine(4, "step", stream) as progress:
        progress.update(1, [("loss", 0.75)])
        assert screen(stream.getvalue())[-1].startswith("1/4 steps  loss 0.7500  0s")
        progress.update(4, [("loss", 0.5), ("accuracy", 1.0)])  # the last unit is always drawn
        assert screen(stream.getvalue())[-1].startswith("4/4 steps  loss 0.5000  accuracy 1.0000")
    assert screen(stream.getvalue()) == [""]  # erased: the next line starts at column 0
    assert "\x1b[1m" not in stream.getvalue() and "\b" not in stream.getvalue()  # no colour, no BS


def test_an_interruption_leaves_the_cursor_on_an_empty_line():
    stream = FakeTerminal()
    with pytest.raises(KeyboardInterrupt), ProgressLine(10, "image", stream) as progress:
        progress.add(3)
        raise KeyboardInterrupt
    stream.write("interrupted: ...\n")
    assert screen(stream.getvalue()) == ["interrupted: ...", ""]


def test_the_estimate_of_time_left_follows_the_rate_so_far():
    line = ProgressLine(40, "step", FakeTerminal())
    line.done = 10
    assert line.line(5.0) == "10/40 steps  5s, 15s left"
