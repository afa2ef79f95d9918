"""The shell every `python -m catdog.<tool>` entry point runs in."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags, logging

from catdog.errors import CatdogError


def run(main: Callable[[Sequence[str]], int | None],
        define_flags: Callable[[flags.FlagValues], None]) -> None:
    """Defines the entry point's flags, parses them, and runs `main`; a `CatdogError` ends it
    with its one-line message and exit status 2."""
    define_flags(flags.FLAGS)

    def guarded(argv: Sequence[str]) -> int | None:
        try:
            return main(argv)
        except CatdogError as error:
            logging.error("%s", error)
            print(f"error: {error}", file=sys.stderr)
            return 2
        except OSError as error:  # an I/O failure no library call turned into a CatdogError
            where = f"{error.filename}: " if error.filename else ""
            print(f"error: {where}{error.strerror or error}", file=sys.stderr)
            return 2

    app.run(guarded)
