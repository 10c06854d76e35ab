"""Settings declared once, as dataclass fields, and turned into command-line options.

A setting is a field made with :func:`setting`: its type (the annotation), its
default, its help text and whether the command line offers it live there, and
its check in the dataclass's ``__post_init__``, which raises
:class:`SettingError` naming the field. :func:`add_options` makes the argparse
options of a dataclass's fields (``--image-size`` for ``image_size``), and
:func:`from_options` builds the dataclass from the parsed options, naming the
option in its error (``--image-size must be ...``). No torch here: the command
line parses before torch loads.
"""

from __future__ import annotations

import argparse
import math
import types
import typing
from dataclasses import MISSING, field, fields


class SettingError(ValueError):
    """A setting's value is refused. ``problem`` may hold ``{}`` for each of ``others``: the names of the
    other settings it speaks of, written as fields or as options."""

    def __init__(self, name: str, problem: str, *others: str):
        self.name, self.problem, self.others = name, problem, others
        super().__init__(self.text(name, others))

    def text(self, name: str, others) -> str:
        return f"{name}{'' if self.problem.startswith(',') else ' '}{self.problem.format(*others)}"

    def as_option(self) -> ValueError:
        """The same refusal, naming command-line options."""
        return ValueError(self.text(flag(self.name), list(map(flag, self.others))))


def flag(name: str) -> str:
    """The option of the field ``name``: ``--image-size`` for ``image_size``."""
    return "--" + name.replace("_", "-")


def setting(default, help: str, *, option: bool = True, group: str | None = None, metavar: str | None = None,
            stored: bool = False):
    """A dataclass field with its help text. ``option``: offered on the command line; ``group``: options of
    the same group exclude each other; ``metavar``: the value's name in the help; ``stored``: recorded
    where the dataclass says it records its settings (a checkpoint)."""
    return field(default=default, metadata={"help": help, "option": option, "group": group, "metavar": metavar,
                                            "stored": stored})


def finite(value) -> bool:
    """Whether ``value`` is finite as a float (an int too large for one is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_number(name: str, value, low=None, high=None, *, integer: bool = False, above_low: bool = False,
                 below_high: bool = False, optional: bool = False) -> None:
    """SettingError naming ``name`` unless ``value`` is a finite number (an integer with ``integer``) in
    [low, high] (ends left open by ``above_low`` / ``below_high``); None passes when ``optional``."""
    if optional and value is None:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not finite(value):
        raise SettingError(name, f"must be {kind}, got {value!r}")
    too_low = low is not None and (value <= low if above_low else value < low)
    too_high = high is not None and (value >= high if below_high else value > high)
    if too_low or too_high:
        if high is None:
            span = f"{'>' if above_low else '>='} {low}"
        else:
            span = f"in {'(' if above_low else '['}{low}, {high}{')' if below_high else ']'}"
        raise SettingError(name, f"must be {span}, got {value}")


def check_flag(name: str, value) -> None:
    """SettingError naming ``name`` unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise SettingError(name, f"must be True or False, got {value!r}")


def check_choice(name: str, value, choices: tuple, optional: bool = False) -> None:
    """SettingError naming ``name`` unless ``value`` is one of ``choices`` (or None when ``optional``)."""
    if not (optional and value is None) and (not isinstance(value, str) or value not in choices):
        raise SettingError(name, f"must be one of {', '.join(choices)}, got {value!r}")


def _base(annotation):
    """(type, choices) of a field's annotation, None aside: ``int | None`` -> (int, None),
    ``Literal["add", "mul"] | None`` -> (str, ("add", "mul"))."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        return str, typing.get_args(annotation)
    return annotation, None


def choices_of(cls, name: str) -> tuple[str, ...] | None:
    """The values the field ``name`` of ``cls`` may take, when its type lists them."""
    return _base(typing.get_type_hints(cls)[name])[1]


def add_options(parser: argparse.ArgumentParser, cls, *, defaults: dict | None = None,
                only: tuple[str, ...] | None = None, choices: dict | None = None) -> None:
    """Add an option for each field of the dataclass ``cls`` that is offered on the command line (or for the
    fields in ``only``), with its help text and its default (or the one in ``defaults``: a command's own).
    ``choices``: a field's choices where its type does not list them (a registry's names)."""
    hints, groups = typing.get_type_hints(cls), {}
    for f in fields(cls):
        if (f.name not in only) if only is not None else not f.metadata.get("option"):
            continue
        default = (defaults or {}).get(f.name, None if f.default is MISSING else f.default)
        kind, listed = _base(hints[f.name])
        group = f.metadata.get("group")
        if group is not None and group not in groups:
            groups[group] = parser.add_mutually_exclusive_group()
        target = parser if group is None else groups[group]
        if kind is bool:
            target.add_argument(flag(f.name), action="store_true", help=f.metadata["help"])
            continue
        extra = {"metavar": f.metadata["metavar"]} if f.metadata.get("metavar") else {}
        listed = (choices or {}).get(f.name, listed)
        if listed is not None:
            extra["choices"] = listed
        if kind is not str:  # argparse reads text as it is
            extra["type"] = kind
        target.add_argument(flag(f.name), default=default, help=f.metadata["help"], **extra)


def from_options(cls, args: argparse.Namespace, **values):
    """``cls`` built from the parsed options that name its fields (and ``values``); a refused value is
    named as its option."""
    given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    try:
        return cls(**{**given, **values})
    except SettingError as e:
        raise e.as_option() from None
