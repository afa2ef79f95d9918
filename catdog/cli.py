"""The shell every `python -m catdog.<tool>` entry point runs in."""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import app, flags, logging

from catdog.errors import CatdogError


class _OnlyCatdog(std_logging.Filter):
    """Passes catdog's own log records, and anything at ERROR or above."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.ERROR or record.pathname.startswith(_PACKAGE)


_PACKAGE = str(Path(__file__).resolve().parent)


def quiet_unless_verbose() -> None:
    """Without -v/--verbosity, the screen gets catdog's log lines only: TensorFlow's logger is
    set to ERROR (saver chatter, collective INFO lines) and other libraries' records, such as
    Keras' HDF5 "legacy format" warning, are kept off the screen (logs/train.log still gets
    those)."""
    if flags.FLAGS["verbosity"].present:
        return
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _OnlyCatdog) for f in handler.filters):
        handler.addFilter(_OnlyCatdog())
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)


def exit_at_once(status: int) -> None:
    """Ends the process with `status` without tearing the interpreter down. After an interrupt
    lands mid-step, tf.data's threads and in-flight ops are still running, and finalising Python
    under them can crash the process (seen as SIGSEGV after the interrupted line). Callers have
    already put everything on disk (every write is atomic), so only streams and log files need
    flushing, and they are flushed here."""
    sys.stdout.flush()
    sys.stderr.flush()
    std_logging.shutdown()
    os._exit(status)


_CHECKOUT = Path(__file__).resolve().parents[1]  # where configs/ lives in a clone


def expand_flagfiles(argv: Sequence[str], cwd: Path | None = None) -> list[str]:
    """argv with every --flagfile replaced by the flags it holds, recursively, so that the
    shipped flagfiles work from any folder: a flagfile path (on the command line or inside a
    flagfile) is read from the current folder when it is there, else from the catdog checkout
    (`--flagfile=configs/quickstart.flags` anywhere). Later flags still override earlier ones,
    as with absl's own --flagfile."""
    cwd = cwd or Path.cwd()
    expanded: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--flagfile" and i + 1 < len(args):
            arg, i = f"--flagfile={args[i + 1]}", i + 1
        if arg.startswith("--flagfile="):
            expanded += _flags_in(arg.split("=", 1)[1], cwd, depth=0)
        else:
            expanded.append(arg)
        i += 1
    return expanded


def _flags_in(name: str, cwd: Path, depth: int) -> list[str]:
    if depth > 20:
        raise CatdogError(f"--flagfile={name}: flagfiles include each other in a loop")
    path = next((p for p in (cwd / name, _CHECKOUT / name) if p.is_file()), None)
    if path is None:
        return [f"--flagfile={name}"]  # absl reports the missing file in its own words
    flags_: list[str] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--flagfile="):
            flags_ += _flags_in(line.split("=", 1)[1], cwd, depth + 1)
        else:
            flags_.append(line)
    return flags_


HELP_ARGS = ("--help", "-h", "--helpshort", "-?")


def version_line() -> str:
    """What `--version` prints: catdog's version and the Python it runs on (TensorFlow's is
    not imported for it, so the answer is instant)."""
    from catdog.version import __version__

    return f"catdog {__version__} (Python {sys.version.split()[0]})"


def grouped_flags(flag_values: flags.FlagValues, groups: dict[str, Sequence[str]],
                  list_others: bool = True) -> list[tuple[str, list[flags.Flag]]]:
    """catdog's own flags (those its modules define) in `groups` (a flag may be in several),
    the rest under "options" unless `list_others` is False; empty groups left out."""
    ours = {f.name: f for module, defined in flag_values.flags_by_module_dict().items()
            if module.split(".")[0] == "catdog" for f in defined}
    grouped = [(g, [n for n in names if n in ours]) for g, names in groups.items()]
    listed = {n for _, names in grouped for n in names}
    if list_others:
        grouped.append(("options", sorted(set(ours) - listed)))
    return [(group, [ours[n] for n in names]) for group, names in grouped if names]


def short_help(program: str, flag_values: flags.FlagValues,
               groups: dict[str, Sequence[str]], usage: str = "[--flag=value ...]",
               list_others: bool = True) -> str:
    """The --help page: catdog's flags by group (see `grouped_flags`) with their defaults
    (absl's --helpshort lists only the flags defined in the main module, which for catdog is
    none)."""
    lines = [f"usage: {program} {usage}", ""]
    for group, group_flags in grouped_flags(flag_values, groups, list_others):
        lines.append(f"{group}:")
        for flag in group_flags:
            lines.append(f"  --{flag.name}: {flag.help}")
            lines.append(f"    (default: {flag.default_as_str})")
        lines.append("")
    lines.append("--helpfull lists every flag, absl's and TensorFlow's included.")
    return "\n".join(lines)


def flags_reference() -> str:
    """Every command's flags as Markdown tables, by group, with defaults and help: the text of
    docs/flags.md (`python -m catdog --flags_reference`; tests/test_flags.py keeps them equal)."""
    from catdog.commands import COMMANDS

    lines = ["# Flags", "",
             "Every catdog command's own flags, generated from their definitions (Config and "
             "ServerOptions fields) by `python -m catdog --flags_reference`; `--help` on a "
             "command prints the same. A flagfile (`--flagfile=FILE`) holds any of them, one "
             "per line.", ""]
    for name, command in COMMANDS.items():
        lines += [f"## `python -m catdog.{name}`: {command.summary}", "",
                  f"`python -m catdog.{name} {command.usage}`", ""]
        grouped = grouped_flags(command.flag_values(), command.groups(), command.list_others)
        for group, group_flags in grouped:
            lines += [f"### {group}", ""] if len(grouped) > 1 else []
            lines += ["| flag | default | what it does |", "|---|---|---|"]
            lines += [f"| `--{flag.name}` | {_markdown_default(flag)} | "
                      f"{flag.help.replace('|', chr(92) + '|')} |" for flag in group_flags]
            lines.append("")
    return "\n".join(lines)


def _markdown_default(flag: flags.Flag) -> str:
    if flag.default_as_str is None:
        return "none"
    value = flag.default_as_str.strip("'")
    return f"`{value}`" if value else "empty"


def run(main: Callable[[Sequence[str]], int | None],
        define_flags: Callable[[flags.FlagValues], None], usage: str = "[--flag=value ...]",
        help_groups: dict[str, Sequence[str]] | None = None, list_others: bool = True) -> None:
    """Defines the entry point's flags, parses them, and runs `main`; a `CatdogError` ends it
    with its one-line message (printed once) and exit status 2. `usage`, `help_groups` and
    `list_others` shape --help (see `short_help`)."""
    define_flags(flags.FLAGS)
    _answer_version_or_help(sys.argv, flags.FLAGS, _program(sys.argv), usage, help_groups or {},
                            list_others)

    def guarded(argv: Sequence[str]) -> int | None:
        quiet_unless_verbose()
        try:
            return main(argv)
        except CatdogError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except OSError as error:  # an I/O failure no library call turned into a CatdogError
            where = f"{error.filename}: " if error.filename else ""
            print(f"error: {where}{error.strerror or error}", file=sys.stderr)
            return 2

    app.run(guarded, argv=[sys.argv[0], *expand_flagfiles(sys.argv[1:])],
            flags_parser=parse_flags_or_exit)


def _program(argv: Sequence[str]) -> str:
    """How the user started this command: `python -m catdog.<tool>`, or the console script."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return (f"python -m {spec.name.removesuffix('.__main__')}" if spec
            else Path(argv[0]).name)


def _answer_version_or_help(argv: Sequence[str], flag_values: flags.FlagValues, program: str,
                            usage: str, groups: dict[str, Sequence[str]],
                            list_others: bool) -> None:
    """Prints catdog's --version (unless the command has its own, as serve has TF Serving's)
    or the short --help, and exits; returns when `argv` asks for neither."""
    if "--version" in argv[1:] and "version" not in flag_values:
        print(version_line())
        sys.exit(0)
    if any(arg in HELP_ARGS for arg in argv[1:]):
        print(short_help(program, flag_values, groups, usage, list_others))
        sys.exit(0)


def run_command(name: str, main: Callable[[Sequence[str]], int | None]) -> None:
    """`run` for the catdog command `name`, with its flags, usage and --help layout from
    catdog/commands.py (the table catdog.startup answers --help from before TensorFlow)."""
    from catdog.commands import COMMANDS

    command = COMMANDS[name]
    run(main, command.define_flags(), command.usage, command.groups(), command.list_others)


def answer_before_tensorflow(name: str, argv: Sequence[str]) -> None:
    """For the catdog command `name` (if it is one): --help printed, and a bad flag's one line,
    before anything imports TensorFlow; exits then, else returns and the command starts.
    Commands whose --version needs TensorFlow (serve's, as TF Serving's) answer it later."""
    from catdog.commands import COMMANDS

    command = COMMANDS.get(name)
    if command is None:
        return
    app.define_help_flags()  # absl's own flags (-v, --logtostderr, --only_check_args...)
    early = flags.FlagValues()
    early.append_flag_values(flags.FLAGS)
    command.define_flags()(early)
    # `python -m catdog.data` gets here while its package is imported, before runpy has set up
    # __main__ (argv[0] is still "-m").
    program = f"python -m catdog.{name}" if argv[0] == "-m" else _program(argv)
    _answer_version_or_help(argv, early, program, command.usage, command.groups(),
                            command.list_others)
    if "--helpfull" not in argv[1:]:  # absl's full help lists TensorFlow's flags too
        parse_flags_or_exit([argv[0], *expand_flagfiles(argv[1:])], early)


def parse_flags_or_exit(argv: Sequence[str],
                        flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl's flag parsing, with a bad flag ending the command in one line and exit status 2, as
    any other bad input does (absl's own parser prints "FATAL Flags parsing error" and a second
    line, and exits 1)."""
    try:
        return flag_values(argv)
    except flags.Error as error:
        message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        message = re.sub(r"invalid literal for int\(\) with base 10: .*", "must be an integer",
                         message)
        message = re.sub(r"could not convert string to float: .*", "must be a number", message)
        for absl_words, ours in _ABSL_REWORDED:
            message = re.sub(absl_words, ours, message)
        print(f"error: {message} (--help lists the flags)", file=sys.stderr)
        sys.exit(2)


# absl's wording of three mistakes → a line naming the thing at fault, without absl's prefixes.
_ABSL_REWORDED = (
    (r"^flag --(\w+)=None: Flag --\1 must have a value other than None\.$", r"--\1 is required"),
    (r"^ERROR:: Unable to open flagfile: \[Errno \d+\] (.*): '(.*)'$",
     r"cannot read the flagfile \2: \1"),
    (r"^flags (?:\w+=[^,:]*, )*\w+=[^,:]*: ", ""),  # a validator of several flags: their values
)
