"""The shell every `python -m catdog.<tool>` entry point runs in."""

from __future__ import annotations

import logging as std_logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import app, flags, logging

from catdog.errors import CatdogError


class _OnlyCatdog(std_logging.Filter):
    """Passes catdog's own log records, and anything at ERROR or above."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.ERROR or record.pathname.startswith(_PACKAGE)


_PACKAGE = str(Path(__file__).resolve().parent)


def quiet_unless_verbose() -> None:
    """Without -v/--verbosity, the screen gets catdog's log lines only: TensorFlow's and Keras'
    Python-side notices (saver chatter, the HDF5 "legacy format" warning, collective INFO lines)
    are dropped. Files such as logs/train.log still get everything."""
    if flags.FLAGS["verbosity"].present:
        return
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _OnlyCatdog) for f in handler.filters):
        handler.addFilter(_OnlyCatdog())
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)


def run(main: Callable[[Sequence[str]], int | None],
        define_flags: Callable[[flags.FlagValues], None]) -> None:
    """Defines the entry point's flags, parses them, and runs `main`; a `CatdogError` ends it
    with its one-line message (printed once) and exit status 2."""
    define_flags(flags.FLAGS)

    def guarded(argv: Sequence[str]) -> int | None:
        quiet_unless_verbose()
        try:
            return main(argv)
        except CatdogError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except OSError as error:  # an I/O failure no library call turned into a CatdogError
            where = f"{error.filename}: " if error.filename else ""
            print(f"error: {where}{error.strerror or error}", file=sys.stderr)
            return 2

    app.run(guarded)
