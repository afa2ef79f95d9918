"""Settings as dataclass fields that carry their own rules, and the absl flags made from them.

A setting's field holds its default, help text, bounds or rule, and whatever else its owner
needs (a `--help` group, whether a resume may change it). The training `Config` and the server's
`ServerOptions` are both built this way, so each validates itself in code with exactly the rules
and words that its command-line flags use:

    >>> Config(batch_size=0)
    CatdogError: Config(batch_size=0): must be at least 1
    $ python -m catdog.train --batch_size=0
    error: flag --batch_size=0: must be at least 1 (--help lists the flags)
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from absl import flags

from catdog.errors import CatdogError

# (predicate, what a valid value is) for settings whose rule is more than bounds or choices.
Check = tuple[Callable[[Any], bool], str]
# Rules between settings: (setting names, predicate over their values, what is valid).
CrossRule = tuple[tuple[str, ...], Callable[..., bool], str]

_TYPE_NAMES = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}
_DEFINE_BY_TYPE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                   float: flags.DEFINE_float, str: flags.DEFINE_string}


def setting(default: Any, help: str, *, at_least: float | None = None,
            at_most: float | None = None, check: Check | None = None, **extra: Any) -> Any:
    """A dataclass field with the metadata every setting has, plus the owner's `extra` keys."""
    return dataclasses.field(default=default, metadata=dict(
        help=help, at_least=at_least, at_most=at_most, check=check, **extra))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type(cls: type, name: str) -> Any:
    """The resolved type of a field: int, float, bool, str, tuple[str, ...], a Literal, or an
    Optional of one of those."""
    return _hints(cls)[name]


def _base_type(cls: type, name: str) -> Any:
    """The field's type without its `| None`."""
    hint = field_type(cls, name)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = (a for a in typing.get_args(hint) if a is not type(None))
    return hint


def choices(cls: type, name: str) -> tuple[str, ...]:
    """The allowed values of a Literal-typed field, else ()."""
    hint = field_type(cls, name)
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def type_problem(cls: type, name: str, value: Any) -> str | None:
    """Why `value` has the wrong type (or is not one of the choices) for field `name`."""
    if choices(cls, name):  # in absl's words for a bad enum flag: code and command line agree
        allowed = choices(cls, name)
        return None if value in allowed else f"value should be one of <{'|'.join(allowed)}>"
    if value is None and _base_type(cls, name) is not field_type(cls, name):
        return None
    hint = _base_type(cls, name)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    else:  # tuple[str, ...]
        ok = isinstance(value, tuple) and all(isinstance(item, str) for item in value)
    return None if ok else f"must be {_TYPE_NAMES.get(hint, 'a tuple of strings')}"


def setting_problem(cls: type, name: str, value: Any) -> str | None:
    """Why a value of the right type is not valid for field `name` (bounds or rule), or None."""
    meta = fields(cls)[name].metadata
    if value is None:
        return None
    low, high = meta["at_least"], meta["at_most"]
    if low is not None and high is not None and not low <= value <= high:
        return f"must be between {low:g} and {high:g}"
    if low is not None and value < low:
        return f"must be at least {low:g}"
    if high is not None and value > high:
        return f"must be at most {high:g}"
    if meta["check"] and not meta["check"][0](value):
        return meta["check"][1]
    return None


def fields(cls: type) -> dict[str, dataclasses.Field]:
    """The dataclass's fields by name, each with its metadata."""
    return {field.name: field for field in dataclasses.fields(cls)}


def validate(settings: Any, cross_rules: tuple[CrossRule, ...] = ()) -> None:
    """Raises CatdogError naming the first invalid setting and what would be valid, in the form
    `Config(batch_size=0): must be at least 1`."""
    cls = type(settings)
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        problem = type_problem(cls, field.name, value) or setting_problem(cls, field.name, value)
        if problem:
            raise CatdogError(f"{cls.__name__}({field.name}={value!r}): {problem}")
    for names, holds, message in cross_rules:
        if not holds(*(getattr(settings, name) for name in names)):
            values = ", ".join(f"{name}={getattr(settings, name)!r}" for name in names)
            raise CatdogError(f"{cls.__name__}({values}): {message}")


# --- absl flags ----------------------------------------------------------------------------------

def define_flag(cls: type, name: str, flag_values: flags.FlagValues) -> None:
    """Defines flag --`name` from field `name` of `cls`: its type, default, help and checks.
    A field that may be None is offered as its flag's zero value (`--rest_api_port=0`), and read
    back as None by `value_from_flag`."""
    field = fields(cls)[name]
    hint, help_text = _base_type(cls, name), field.metadata["help"]
    default = field.default
    if default is None:
        default = hint()
    if choices(cls, name):
        flags.DEFINE_enum(name, default, choices(cls, name), help_text, flag_values=flag_values)
    elif hint in _DEFINE_BY_TYPE:
        _DEFINE_BY_TYPE[hint](name, default, help_text, flag_values=flag_values)
    else:  # tuple[str, ...]
        flags.DEFINE_list(name, list(default), help_text, flag_values=flag_values)

    def check(value) -> bool:
        problem = setting_problem(cls, name, value_from_flag(cls, name, value))
        if problem:
            raise flags.ValidationError(problem)
        return True

    flags.register_validator(name, check, flag_values=flag_values)


def value_from_flag(cls: type, name: str, value: Any) -> Any:
    """A parsed flag's value as field `name` holds it: lists become tuples, and the zero value
    of a field that may be None becomes None."""
    if _base_type(cls, name) == tuple[str, ...]:
        return tuple(value or ())
    if _base_type(cls, name) is not field_type(cls, name) and not value:
        return None
    return value


def register_cross_rules(cross_rules: tuple[CrossRule, ...],
                         flag_values: flags.FlagValues) -> None:
    """The rules between settings as absl multi-flag validators, in the same words."""
    for names, holds, message in cross_rules:
        flags.register_multi_flags_validator(
            list(names), lambda values, names=names, holds=holds: holds(
                *(values[name] for name in names)),
            message=message, flag_values=flag_values)


def from_flags(cls: type, flag_values: flags.FlagValues) -> Any:
    """An instance of `cls` from the parsed flags named like its fields."""
    return cls(**{name: value_from_flag(cls, name, flag_values[name].value)
                  for name in fields(cls)})
