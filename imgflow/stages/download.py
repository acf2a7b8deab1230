"""download: every record of a source into one raw table, untouched.

Output folder::

    records.parquet   id (string), image (binary: the encoded file bytes as the source holds them),
                      label (string: the class name)

Nothing is decoded or judged here: that is the clean stage's job, so a broken image is quarantined
with a reason instead of stopping the download.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from imgflow.config import DownloadConfig
from imgflow.errors import SourceError
from imgflow.fingerprint import sha256_bytes
from imgflow.sources import RawRecord, open_source
from imgflow.store import Stage, StageResult

SCHEMA = pa.schema([("id", pa.string()), ("image", pa.binary()), ("label", pa.string())])
_BATCH = 1024


def source_fingerprint(config: DownloadConfig) -> str:
    """The content fingerprint of the configured source: the download stage's only input."""
    return open_source(config.source, config.options).fingerprint()


def sample(records: Iterable[RawRecord], limit: int) -> list[RawRecord]:
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


def _build(out_dir: Path, config: DownloadConfig, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    source = open_source(config.source, config.options)
    records = source.records() if config.limit is None else sample(source.records(), config.limit)
    count = 0
    batch: dict[str, list[Any]] = {"id": [], "image": [], "label": []}
    with pq.ParquetWriter(out_dir / "records.parquet", SCHEMA) as writer:
        for record in records:
            batch["id"].append(record.id)
            batch["image"].append(record.image)
            batch["label"].append(record.label)
            count += 1
            if len(batch["id"]) >= _BATCH:
                writer.write_table(pa.table(batch, schema=SCHEMA))
                batch = {name: [] for name in batch}
        if batch["id"]:
            writer.write_table(pa.table(batch, schema=SCHEMA))
    if count == 0:
        raise SourceError(f"dataset source {config.source} holds no records")
    return {"records": count, "source": config.source}


DOWNLOAD = Stage("download", "1", _build)
