"""Dataset sources behind one interface.

A source turns a spec such as ``folder:data/pets``, ``parquet:s3://lake/pets``, ``archive:URL#sha256=HEX``,
``sample:mnist5k`` or ``tfds:mnist:3.0.1`` into a stream of raw records:
an id that is stable across runs, the encoded image file bytes exactly as the source holds them, and
a label name. Decoding and checking happen later, in the clean stage, so one broken image never stops
a download. ``fingerprint()`` describes the content (a file hash, or a catalog name + version +
checksums), never when it was fetched.

Adding a source: write a class with ``fingerprint`` and ``records`` and register its scheme in
``SCHEMES``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from imgflow.errors import SourceError


@dataclass(frozen=True)
class RawRecord:
    id: str
    image: bytes
    label: str


class Source(Protocol):
    spec: str

    def fingerprint(self) -> str:
        """A hash of the source's content, so a changed source means a new download key."""
        ...

    def records(self) -> Iterator[RawRecord]:
        """Every record, in a deterministic order."""
        ...


def _sample(rest: str, options: Mapping[str, Any]) -> Source:
    from imgflow.sources.sample import SampleSource

    return SampleSource(rest)


def _folder(rest: str, options: Mapping[str, Any]) -> Source:
    from imgflow.sources.folder import FolderSource

    return FolderSource(rest)


def _parquet(rest: str, options: Mapping[str, Any]) -> Source:
    from imgflow.sources.parquet import ParquetSource

    return ParquetSource(rest, options)


def _archive(rest: str, options: Mapping[str, Any]) -> Source:
    from imgflow.sources.archive import ArchiveSource

    return ArchiveSource(rest)


def _tfds(rest: str, options: Mapping[str, Any]) -> Source:
    from imgflow.sources.tfds import TfdsSource

    return TfdsSource.from_spec(rest, options)


SCHEMES: dict[str, Callable[[str, Mapping[str, Any]], Source]] = {
    "sample": _sample,
    "folder": _folder,
    "parquet": _parquet,
    "archive": _archive,
    "tfds": _tfds,
}


def open_source(spec: str, options: Mapping[str, Any] | None = None) -> Source:
    """The source for ``scheme:rest``; a clear ``SourceError`` for an unknown scheme."""
    scheme, sep, rest = spec.partition(":")
    if not sep or scheme not in SCHEMES:
        raise SourceError(
            f"unknown dataset source {spec!r}: a source is SCHEME:WHERE with SCHEME one of "
            f"{', '.join(sorted(SCHEMES))} (e.g. sample:mnist5k, folder:data/pets, parquet:s3://bucket/table, tfds:mnist)"
        )
    return SCHEMES[scheme](rest, options or {})
