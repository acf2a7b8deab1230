"""Settings checked against their config field's type and rule, with the words a person reads:
``pets.toml [train] epochs must be an integer, got the string '5'``.

Stage configs are pydantic models (``StageConfig``): pydantic checks the types and the rules
(``Rule``), and ``parse_section`` says what it found in these words. ``check_value`` checks a spec's
top-level keys, which are no config's fields.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from imgflow.runtime.errors import ConfigError
from imgflow.store.fingerprint import INTERNAL


def check_value(setting: str, value: Any, hint: Any, rule: Rule | None = None) -> None:
    """A ``ConfigError`` unless ``value`` is of the type ``hint`` and, when given, passes ``rule``."""
    if not matches(value, hint):
        raise ConfigError(f"{setting} must be {expected(hint)}, got {described(value)}")
    if rule is not None and value is not None and not rule.test(value):
        raise ConfigError(f"{setting} must be {rule.words}, got {described(value)}")


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


@dataclass(frozen=True)
class Rule:
    """A config field's value rule: a test and the words that say it ("at least 1"). Annotated on a
    field (``Annotated[int, Rule(...)]``), pydantic runs it once the value has the field's type; an
    optional field's None passes."""

    test: Callable[[Any], bool]
    words: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def _check(self, value: Any) -> Any:
        if value is not None and not self.test(value):
            raise PydanticCustomError("rule", "must be {words}", {"words": self.words})
        return value


class StageConfig(BaseModel):
    """A stage's config: frozen, strict (an integer field takes no 5.0 and no true; a number field no
    NaN), no unknown fields, each field's ``Rule`` checked. ``parse_section`` reads one from a spec's
    section with the words a person reads; ``replace`` is a copy with some fields changed, checked."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    @classmethod
    def settings(cls) -> dict[str, FieldInfo]:
        """The fields a spec may set (not the ones a stage records for itself: ``INTERNAL``)."""
        return {name: info for name, info in cls.model_fields.items() if INTERNAL not in info.metadata}

    @classmethod
    def rule(cls, name: str) -> Rule | None:
        return next((item for item in cls.model_fields[name].metadata if isinstance(item, Rule)), None)

    def replace(self, **changes: Any) -> Self:
        return self.model_validate({**self.model_dump(), **changes})


def parse_section(cls: type[StageConfig], values: Mapping[str, Any], where: str) -> Any:
    """``cls`` from a section's ``values``: every name known, every value of its field's type and
    within its rule, else a ``ConfigError`` naming the setting and what it must be (the first wrong
    one, in the section's order)."""
    known = cls.settings()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    # TOML has arrays, the configs tuples: keep configs hashable and their JSON the same.
    try:
        return cls.model_validate({k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except ValidationError as error:
        raise ConfigError(_explain(error, cls, values, where)) from None


def _explain(error: ValidationError, cls: type[StageConfig], values: Mapping[str, Any], where: str) -> str:
    """Pydantic's verdict in the words of ``check_value``: the setting, what it must be, what it got."""
    order = list(values)
    first = min(error.errors(), key=lambda e: order.index(e["loc"][0]) if e["loc"] and e["loc"][0] in order else len(order))
    if not first["loc"]:  # a rule across fields
        return f"{where}: {first['msg']}"
    name = str(first["loc"][0])
    if first["type"] == "rule" and len(first["loc"]) == 1:
        return f"{where} {name} {first['msg']}, got {described(values[name])}"
    return f"{where} {name} must be {expected(typing.get_type_hints(cls)[name])}, got {described(values[name])}"


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``"15m"``, ``"90s"``, ``"1h30m"`` or ``"600"`` (seconds); a
    ``ValueError`` for anything else."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    else:
        match = _DURATION.fullmatch(text)
        if not text or match is None or not any(match.groups()):
            raise ValueError(f'{text!r} is not a duration such as "15m", "90s" or "1h30m"')
        hours, minutes, secs = (float(part or 0) for part in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ValueError(f"{text!r} is no time at all: a budget must be above 0")
    return seconds


def is_duration(text: str) -> bool:
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True
