"""download: every record of a source into one raw table, untouched.

Output folder::

    records.parquet   id (string), image (binary: the encoded file bytes as the source holds them),
                      label (string: the class name), and, from a source that carries text,
                      text (binary: as the source holds it, null for a record without)

Nothing is decoded or judged here: that is the clean stage's job, so a broken image is quarantined
with a reason instead of stopping the download.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from imgflow.config import DownloadConfig
from imgflow.data.sources import open_source, sample_records
from imgflow.results import DownloadInfo, StageResult
from imgflow.runtime import network, progress
from imgflow.runtime.errors import SourceError
from imgflow.store.stage import Stage

SCHEMA = pa.schema([("id", pa.string()), ("image", pa.binary()), ("label", pa.string())])
TEXT_SCHEMA = SCHEMA.append(pa.field("text", pa.binary()))
_BATCH = 1024


def _build(out_dir: Path, config: DownloadConfig, inputs: Mapping[str, StageResult]) -> DownloadInfo:
    with network.time_budget(config.timeout):  # how long the source's fetches may retry
        return _download(out_dir, config)


def _download(out_dir: Path, config: DownloadConfig) -> DownloadInfo:
    source = open_source(config.source, config.options)
    records = source.records() if config.limit is None else sample_records(source.records(), config.limit)
    count = 0
    schema = TEXT_SCHEMA if source.has_text else SCHEMA
    batch: dict[str, list[Any]] = {name: [] for name in schema.names}
    with pq.ParquetWriter(out_dir / "records.parquet", schema) as writer:
        for record in records:
            for name in schema.names:
                batch[name].append(getattr(record, name))
            count += 1
            if len(batch["id"]) >= _BATCH:
                writer.write_table(pa.table(batch, schema=schema))
                batch = {name: [] for name in batch}
                progress.report(count, config.limit, "records")
        if batch["id"]:
            writer.write_table(pa.table(batch, schema=schema))
    if count == 0:
        raise SourceError(f"dataset source {config.source} holds no records")
    progress.report(count, count, "records")
    return DownloadInfo(records=count, source=config.source)


DOWNLOAD = Stage("download", "1", _build)
