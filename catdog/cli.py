"""The shell every `python -m catdog.<tool>` entry point runs in."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, logging

from catdog import flags as _defines_flags  # noqa: F401  (flags must exist before parsing)
from catdog.errors import CatdogError


def run(main: Callable[[Sequence[str]], int | None]) -> None:
    """Parses flags and runs `main`; a `CatdogError` ends it with its one-line message."""

    def guarded(argv: Sequence[str]) -> int | None:
        try:
            return main(argv)
        except CatdogError as error:
            logging.error("%s", error)
            print(f"error: {error}", file=sys.stderr)
            return 2

    app.run(guarded)
