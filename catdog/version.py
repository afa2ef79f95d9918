"""catdog's version: what `--version` prints and what pyproject.toml's dynamic version reads."""

__version__ = "0.1.0"
