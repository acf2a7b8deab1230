"""Dataset sources behind one interface.

A source turns a spec such as ``folder:data/pets``, ``parquet:s3://lake/pets``, ``archive:URL#sha256=HEX``,
``sample:mnist5k``, ``idx:/usr/share/datasets/fashion-mnist`` or ``tfds:mnist:3.0.1`` into a stream of raw records:
an id that is stable across runs, the encoded image file bytes exactly as the source holds them, a
label name and, from a source configured to carry text (``has_text``), the record's text as raw bytes
(None: this record has none). The options naming the text: ``text_column`` (Parquet), ``text_sidecar``
(folder and archive: ``".txt"`` reads ``cat_01.txt`` as the text of ``cat_01.jpg``), ``text_feature``
(TFDS). Decoding and checking happen later, in the clean stage, so one broken image never stops
a download. ``fingerprint()`` describes the content (a file hash, or a catalog name + version +
checksums), never when it was fetched.

Adding a source: write a class with ``fingerprint`` and ``records`` (``imgflow.data.sources.record.Source``)
and register its scheme in ``SCHEMES``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from imgflow.data.sources.record import RawRecord, Source
from imgflow.runtime.errors import SourceError
from imgflow.store.fingerprint import sha256_bytes


def _sample(rest: str, options: Mapping[str, Any]) -> Source:
    from imgflow.data.sources.sample import SampleSource

    return SampleSource(rest)


def _folder(rest: str, options: Mapping[str, Any]) -> Source:
    from imgflow.data.sources.folder import FolderSource

    return FolderSource(rest, options)


def _parquet(rest: str, options: Mapping[str, Any]) -> Source:
    from imgflow.data.sources.parquet import ParquetSource

    return ParquetSource(rest, options)


def _archive(rest: str, options: Mapping[str, Any]) -> Source:
    from imgflow.data.sources.archive import ArchiveSource

    return ArchiveSource(rest, options)


def _idx(rest: str, options: Mapping[str, Any]) -> Source:
    from imgflow.data.sources.idx import IdxSource

    return IdxSource(rest, options)


def _tfds(rest: str, options: Mapping[str, Any]) -> Source:
    from imgflow.data.sources.tfds import TfdsSource

    return TfdsSource.from_spec(rest, options)


SCHEMES: dict[str, Callable[[str, Mapping[str, Any]], Source]] = {
    "sample": _sample,
    "folder": _folder,
    "parquet": _parquet,
    "archive": _archive,
    "idx": _idx,
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


def source_fingerprint(spec: str, options: Mapping[str, Any] | None = None) -> str:
    """The content fingerprint of a source: the download stage's only input."""
    return open_source(spec, options).fingerprint()


def sample_records(records: Iterable[RawRecord], limit: int) -> list[RawRecord]:
    """``limit`` records chosen by a hash of their ids, in source order.

    Sources are often sorted by class, so the first N records would be one class; the N smallest id
    hashes are spread over the whole source, and the same ids are chosen on every run.
    """
    heap: list[tuple[int, int, RawRecord]] = []
    for order, record in enumerate(records):
        rank = -int(sha256_bytes(record.id.encode())[:16], 16)
        if len(heap) < limit:
            heapq.heappush(heap, (rank, order, record))
        elif rank > heap[0][0]:
            heapq.heapreplace(heap, (rank, order, record))
    return [record for _, _, record in sorted(heap, key=lambda item: item[1])]
