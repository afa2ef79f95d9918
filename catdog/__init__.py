"""catdog: a cat-vs-dog image classifier trained by transfer learning and served by TF Serving."""

__version__ = "0.1.0"
