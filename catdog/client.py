"""`python -m catdog.client`: the gRPC/REST client, which lives in catdog.serving.client."""

from catdog.serving.client import run

if __name__ == "__main__":
    run()
