"""What every catdog command does before TensorFlow loads: the serve command's oneDNN guard and
a quiet start. Each entry point imports this module first. Importing it as a library
quiets TensorFlow's start the same way unless the user chose otherwise."""

import os
import sys


def command() -> str:
    """The catdog tool this process runs ('serve' for `python -m catdog.serve` or `catdog-serve`),
    or '' when catdog is imported as a library."""
    argv = getattr(sys, "orig_argv", None) or []
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1].startswith("catdog."):
        return argv[argv.index("-m") + 1].split(".", 1)[1]
    name = os.path.basename((sys.argv or [""])[0])
    return name.split("-", 1)[1] if name.startswith("catdog-") else ""


def serve_without_onednn() -> None:
    """The serve command runs TensorFlow without its oneDNN CPU kernels, as TF Serving's standard
    build does, whatever the environment says: some oneDNN kernels abort the whole process on a
    malformed input (a rank-2 tensor fed to a convolution fails a CHECK in tensor_format.h), so
    one bad request could take the server down. (They also cost memory per unloaded version and
    speed: docs/serving.md, from benchmarks/soak.py.) Set before TensorFlow is imported."""
    if command() == "serve":
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"


def quiet_tensorflow_start() -> None:
    """catdog's commands show catdog's lines, not TensorFlow's C++ start-up log (the oneDNN and
    CPU-feature notices, the CUDA cuInit error on a CPU-only machine). TensorFlow 2.21 writes
    those before it reads TF_CPP_MIN_LOG_LEVEL, so TensorFlow is imported and its devices listed
    here with stderr set aside; if that fails, what it wrote is shown. With -v/--verbosity, or
    TF_CPP_MIN_LOG_LEVEL=0 or 1 set by the user (asking for more), nothing is hidden; a user's 2
    or 3 (asking for less) is kept and never makes a command noisier. Imported as a library
    (a user's script importing catdog's client or inference), the start is as quiet unless the
    user set TF_CPP_MIN_LOG_LEVEL or had imported TensorFlow already."""
    argv = sys.argv or [""]
    verbose = command() and any(a == "-v" or a.startswith(("--verbosity", "-v="))
                                for a in argv[1:])
    asks_for_more = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("0", "1")
    user_chose = not command() and ("tensorflow" in sys.modules
                                    or "TF_CPP_MIN_LOG_LEVEL" in os.environ)
    if verbose or asks_for_more or user_chose:
        return
    from catdog.terminal import stderr_set_aside

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with stderr_set_aside() as written:
            import tensorflow

            tensorflow.config.list_physical_devices()
    except BaseException:
        sys.stderr.write("".join(f"{line}\n" for line in written))
        raise


def answer_before_tensorflow() -> None:
    """A command's --help and a mistyped flag answered from catdog/commands.py before
    TensorFlow is imported (catdog.cli.answer_before_tensorflow): under a second, not 5-10."""
    if command():
        from catdog import cli

        cli.answer_before_tensorflow(command(), sys.argv)


serve_without_onednn()
answer_before_tensorflow()
quiet_tensorflow_start()
