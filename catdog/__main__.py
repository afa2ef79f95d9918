"""`python -m catdog`: the version, which tool does what, and (--flags_reference) every tool's
flags as Markdown, the text of docs/flags.md."""

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import sys

from catdog import cli
from catdog.commands import COMMANDS

if __name__ == "__main__":
    if sys.argv[1:] == ["--version"]:
        print(cli.version_line())
        sys.exit(0)
    if sys.argv[1:] == ["--flags_reference"]:
        print(cli.flags_reference(), end="")
        sys.exit(0)
    print("usage: python -m catdog.<tool> --help, one of:")
    for tool, command in COMMANDS.items():
        print(f"  {tool:13} {command.summary}")
    print("python -m catdog --flags_reference prints every tool's flags as Markdown.")
    sys.exit(0 if sys.argv[1:] in ([], ["--help"], ["-h"]) else 2)
