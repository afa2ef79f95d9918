"""`python -m catdog.serve`: the TF Serving stand-in, which lives in catdog.serving.server."""

from catdog.serving.server import run

if __name__ == "__main__":
    run()
