"""Each command's flags, usage line and --help layout, in a module that imports no TensorFlow.

`catdog.startup` answers `--help` and a mistyped flag from here before any command imports
TensorFlow (under a second instead of the 5-10 s TensorFlow's import takes), and every
command's `run()` parses with the same entry (`cli.run_command`), so the two cannot differ.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence

from absl import flags

PREDICT_USAGE = ("--model=PATH [--flag=value ...] IMAGE_OR_FOLDER... (image files, or folders "
                 "whose images are labelled in name order)")
BATCH_USAGE = ("--model=PATH --input=FOLDER_OR_GLOB --output=PREFIX [--flag=value ...] "
               "[-- BEAM_PIPELINE_OPTIONS]")
CLIENT_USAGE = "--server=URL [--model=NAME] [--flag=value ...] IMAGE_OR_FOLDER..."
DATA_USAGE = "check [DIR] | download | prepare [--flag=...]"
DATA_SERVICE_USAGE = ("dispatcher|worker --host=0.0.0.0 [--port=N] [--flag=value ...] (a worker "
                      "also --dispatcher=host:port)")


@dataclasses.dataclass(frozen=True)
class Command:
    """Where a command's flags are defined (a module that imports no TensorFlow) and how its
    --help is laid out."""

    summary: str  # what the command does, for `python -m catdog` and docs/flags.md
    flags_module: str
    define: str  # the function of flags_module that defines the flags on a FlagValues
    usage: str = "[--flag=value ...]"
    help_groups: str = ""  # the attribute of flags_module naming {group: flag names}
    list_others: bool = True

    def define_flags(self) -> Callable[[flags.FlagValues], None]:
        return getattr(importlib.import_module(self.flags_module), self.define)

    def groups(self) -> dict[str, Sequence[str]]:
        module = importlib.import_module(self.flags_module)
        return getattr(module, self.help_groups) if self.help_groups else {}

    def flag_values(self) -> flags.FlagValues:
        """The command's flags alone, on a FlagValues of their own."""
        flag_values = flags.FlagValues()
        self.define_flags()(flag_values)
        return flag_values


COMMANDS = {
    "train": Command("train and export a model", "catdog.flags", "define_train_flags",
                     help_groups="HELP_GROUPS"),
    "evaluate": Command("report on an exported model", "catdog.flags", "define_evaluate_flags"),
    "predict": Command("label image files", "catdog.flags", "define_predict_flags",
                       PREDICT_USAGE),
    "batch": Command("label millions of photos on Apache Beam", "catdog.flags",
                     "define_batch_flags", BATCH_USAGE),
    "publish": Command("gate a candidate into the served folder", "catdog.flags",
                       "define_publish_flags"),
    "serve": Command("the TF Serving-compatible server", "catdog.serving.options",
                     "define_serve_flags"),
    "client": Command("query a server (gRPC or REST)", "catdog.serving.options",
                      "define_client_flags", CLIENT_USAGE),
    "data": Command("check, download or prepare images", "catdog.flags", "define_data_flags",
                    DATA_USAGE, "DATA_VERB_FLAGS", list_others=False),
    "data_service": Command("a tf.data service dispatcher or worker", "catdog.flags",
                            "define_data_service_flags", DATA_SERVICE_USAGE),
}
