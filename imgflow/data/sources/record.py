"""What every source yields and shares: the raw record, the ``Source`` interface, and the helpers for
names and text options the source modules have in common (``imgflow.data.sources`` picks a source)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from imgflow.runtime.errors import SourceError


@dataclass(frozen=True)
class RawRecord:
    id: str
    image: bytes
    label: str
    text: bytes | None = None  # as the source holds it: cleaning checks it is UTF-8


def text_name(name: str) -> str:
    """A file or entry name as text that any writer takes: a name whose bytes are not UTF-8 (Python
    keeps those as lone surrogates, which Parquet and JSON refuse) shows them as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Source(Protocol):
    spec: str
    has_text: bool  # whether records carry text (a text option is set)

    def fingerprint(self) -> str:
        """A hash of the source's content, so a changed source means a new download key."""
        ...

    def records(self) -> Iterator[RawRecord]:
        """Every record, in a deterministic order."""
        ...


def text_option(options: Mapping[str, Any], name: str) -> str | None:
    """A text option's value (None: unset), checked to be a non-empty string."""
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SourceError(f"[options] {name} must be a non-empty string, got {value!r}")
    return value
