"""`python -m catdog.client`: the gRPC/REST client, which lives in catdog.serving.client.

Also the client's library names, as they were importable from here before the serving wing moved
them (`from catdog.client import Client` in user scripts keeps working).
"""

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
from catdog.serving.client import (  # noqa: F401  (re-exported)
    Client,
    GrpcTransport,
    Prediction,
    RestTransport,
    run,
)

if __name__ == "__main__":
    run()
