"""catdog: a cat-vs-dog image classifier trained by transfer learning and served by TF Serving."""

import os as _os
import sys as _sys

__version__ = "0.1.0"


def _command() -> str:
    """The catdog tool this process runs ('serve' for `python -m catdog.serve` or `catdog-serve`),
    or '' when catdog is imported as a library."""
    argv = getattr(_sys, "orig_argv", None) or []
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1].startswith("catdog."):
        return argv[argv.index("-m") + 1].split(".", 1)[1]
    name = _os.path.basename((_sys.argv or [""])[0])
    return name.split("-", 1)[1] if name.startswith("catdog-") else ""


def _serve_without_onednn() -> None:
    """The serve command runs TensorFlow without its oneDNN CPU kernels, as TF Serving's standard
    build does, whatever the environment says: some oneDNN kernels abort the whole process on a
    malformed input (a rank-2 tensor fed to a convolution fails a CHECK in tensor_format.h), so
    one bad request could take the server down. (They also cost memory per unloaded version and
    speed: serving/README.md, from benchmarks/soak.py.) Set before TensorFlow is
    imported; a library user's process is left as it is."""
    if _command() == "serve":
        _os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"


def _quiet_tensorflow_start_for_commands() -> None:
    """catdog's commands show catdog's lines, not TensorFlow's C++ start-up log (the oneDNN and
    CPU-feature notices, the CUDA cuInit error on a CPU-only machine). TensorFlow 2.21 writes
    those before it reads TF_CPP_MIN_LOG_LEVEL, so for `python -m catdog.<tool>` and the
    `catdog-<tool>` scripts (which import this package first) TensorFlow is imported and its
    devices listed here with stderr set aside; if that fails, what it wrote is shown. With
    -v/--verbosity, or TF_CPP_MIN_LOG_LEVEL=0 or 1 set by the user (asking for more), nothing
    is hidden; a user's 2 or 3 (asking for less) is kept and never makes a command noisier;
    importing catdog as a library changes nothing."""
    argv = _sys.argv or [""]
    verbose = any(a == "-v" or a.startswith(("--verbosity", "-v=")) for a in argv[1:])
    asks_for_more = _os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("0", "1")
    if not _command() or verbose or asks_for_more:
        return
    import tempfile

    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _sys.stderr.flush()
    saved = _os.dup(2)
    with tempfile.TemporaryFile() as sink:
        _os.dup2(sink.fileno(), 2)
        try:
            import tensorflow

            tensorflow.config.list_physical_devices()
        except BaseException:
            _os.dup2(saved, 2)
            sink.seek(0)
            _sys.stderr.write(sink.read().decode("utf-8", "replace"))
            raise
        finally:
            _os.dup2(saved, 2)
            _os.close(saved)


_serve_without_onednn()
_quiet_tensorflow_start_for_commands()
