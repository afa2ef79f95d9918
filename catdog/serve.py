"""`python -m catdog.serve`: the TF Serving stand-in, which lives in catdog.serving.server."""

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
from catdog.serving.server import run

if __name__ == "__main__":
    run()
