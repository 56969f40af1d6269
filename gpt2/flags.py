"""Command-line flags generated from config dataclasses.

Every hyperparameter lives in exactly one dataclass field; the launchers pass
``--field_name value`` and this module turns fields into argparse options and
back, so a new field is a new flag with no other code to touch.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _resolve(tp: Any) -> tuple[Any, bool]:
    """Return (base type, optional) for a field annotation such as ``int | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str | None = None,
    unset_means: str | None = None,
    track_given: bool = False,
) -> None:
    """Add one ``--name`` option per field of dataclass ``cls`` (help from field metadata).

    With ``unset_means`` every option defaults to None (not given) and its help says where the value then
    comes from (e.g. "the --preset") instead of naming the field's default. With ``track_given`` every option
    defaults to None too, so that :func:`given_values` tells the flags given from those left out, while the
    help still names the field's default.
    """
    group = parser.add_argument_group(title or cls.__name__)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        tp, optional = _resolve(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        if unset_means is not None:
            help_text = f"{help_text} (default: {unset_means})"
        elif "(default:" not in help_text:  # some help texts say what an empty default means
            help_text = f"{help_text} (default: {default})"
        if unset_means is not None or track_given:
            default = None
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text}
        if tp is bool:
            # --flag, --flag true/false, and --no_flag all work, so launchers can pass variables.
            kwargs.update(nargs="?", const=True, type=_parse_bool)
            group.add_argument(f"--{f.name}", **kwargs)
            group.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", help=argparse.SUPPRESS)
            continue
        choices = f.metadata.get("choices")
        if typing.get_origin(tp) is list:  # a list field is one flag taking one or more values
            kwargs["nargs"] = "+"
            if f.metadata.get("repeatable"):  # given again, the flag adds its values (to an empty default)
                kwargs["action"] = "extend"
            (tp,) = typing.get_args(tp)
            if tp is bool:
                tp = _parse_bool
        if typing.get_origin(tp) is typing.Literal:
            choices = typing.get_args(tp)
            tp = type(choices[0])
        if optional:
            base = tp
            kwargs["type"] = lambda s, base=base: None if s.lower() in ("none", "") else base(s)
        else:
            kwargs["type"] = tp
        if choices:
            kwargs["choices"] = choices
        group.add_argument(f"--{f.name}", **kwargs)


def from_flags(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build dataclass ``cls`` from parsed arguments (fields absent from ``args`` keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)


def given_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of dataclass ``cls`` whose flags were given (flags added with ``track_given`` or
    ``unset_means``, where None means left out)."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if f.init and getattr(args, f.name, None) is not None
    }
