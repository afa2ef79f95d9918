"""`python -m catdog`: the version, and which tool does what."""

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import sys

from catdog import cli

TOOLS = {"train": "train and export a model", "evaluate": "report on an exported model",
         "predict": "label image files", "batch": "label millions of photos on Apache Beam",
         "publish": "gate a candidate into the served folder",
         "serve": "the TF Serving-compatible server", "client": "query a server (gRPC or REST)",
         "data": "check, download or prepare images",
         "data_service": "a tf.data service dispatcher or worker"}

if __name__ == "__main__":
    if sys.argv[1:] == ["--version"]:
        print(cli.version_line())
        sys.exit(0)
    print("usage: python -m catdog.<tool> --help, one of:")
    for tool, what in TOOLS.items():
        print(f"  {tool:13} {what}")
    sys.exit(0 if sys.argv[1:] in ([], ["--help"], ["-h"]) else 2)
