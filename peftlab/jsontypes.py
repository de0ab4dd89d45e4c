"""JSON values checked against type hints, in words a user reads: the argument files and the sweep files both hold
JSON that ``HfArgumentParser`` (or plain ``json``) would pass on unchecked, to fail somewhere deep in a run."""

from __future__ import annotations

import difflib
import enum
import json
import types
import typing
from collections.abc import Iterable
from typing import Any


def type_name(hint: Any) -> str:
    """``hint`` in words, as a JSON value: ``a number``, ``true or false``, ``a string or null``..."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        names = [type_name(arg) for arg in typing.get_args(hint)]
        return " or ".join(dict.fromkeys(names))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is typing.Literal:
        return " or ".join(json.dumps(arg) for arg in typing.get_args(hint))
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if hint is list or typing.get_origin(hint) is list:
        args = typing.get_args(hint)
        return f"a list of {_plural(type_name(args[0]))}" if args else "a list"
    if hint is dict or typing.get_origin(hint) is dict:
        return "an object"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "a string"
    return getattr(hint, "__name__", str(hint))


def _plural(name: str) -> str:
    return {"a whole number": "whole numbers", "a string": "strings", "a number": "numbers"}.get(name, name)


def fits(hint: Any, value: Any) -> bool:
    """Whether the JSON ``value`` has the type ``hint`` (a field's annotation) asks for; unknown types fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(arg, value) for arg in args)
    if hint is typing.Any:
        return True
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        return isinstance(value, str)
    if hint is list or origin is list:
        return isinstance(value, list) and (not args or all(fits(args[0], item) for item in value))
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            return False
        return len(args) < 2 or all(fits(args[0], k) and fits(args[1], v) for k, v in value.items())
    return not isinstance(hint, type) or isinstance(value, hint)


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the valid names closest to a mistyped ``name``, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
