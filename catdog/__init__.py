"""catdog: a cat-vs-dog image classifier trained by transfer learning and served by TF Serving.

Importing the package does nothing else: each command's start (a quiet TensorFlow, serve's
oneDNN guard) is in catdog/startup.py, which every entry point imports first."""

from catdog.version import __version__

__all__ = ["__version__"]
