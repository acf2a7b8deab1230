"""A setting's value checked against its config field's type and rule, with the words a person reads:
``pets.toml [train] epochs must be an integer, got the string '5'``."""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable
from typing import Any

from imgflow.runtime.errors import ConfigError


def check_value(setting: str, value: Any, hint: Any, rule: tuple[Callable[[Any], bool], str] | None = None) -> None:
    """A ``ConfigError`` unless ``value`` is of the type ``hint`` (a config field's annotation) and,
    when given, passes ``rule`` (test, words)."""
    if not matches(value, hint):
        raise ConfigError(f"{setting} must be {expected(hint)}, got {described(value)}")
    if rule is not None and value is not None and not rule[0](value):
        raise ConfigError(f"{setting} must be {rule[1]}, got {described(value)}")


def matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(item, args[0]) for item in value)
        return len(value) == len(args) and all(matches(item, arg) for item, arg in zip(value, args, strict=True))
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(key, str) for key in value)
    raise TypeError(f"no check for a setting of type {hint}")  # a config field of a new kind: add it here


def expected(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(expected(arg) for arg in args if arg is not type(None))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {expected(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} {expected(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a table"
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    return words[hint]


def described(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    kinds = {str: "the string", int: "the integer", float: "the number", list: "the list", tuple: "the list", dict: "the table"}
    text = repr(value if not isinstance(value, tuple) else list(value))
    return f"{kinds.get(type(value), type(value).__name__)} {text if len(text) <= 60 else text[:57] + '...'}"
