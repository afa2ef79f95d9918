"""`python -m catdog.client`: the gRPC/REST client, which lives in catdog.serving.client."""

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
from catdog.serving.client import run

if __name__ == "__main__":
    run()
