"""Date partitions of a ``parquet:`` source: Hive folders named ``date=YYYY-MM-DD`` under its root.

A backfill (and a scheduled retrain of a partitioned source) reads the partitions in a date range one
by one, each as its own ``parquet:ROOT/date=...`` source, so each is downloaded and cleaned once and
cached on its own: adding a day costs one partition, not the whole table.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import partial

import pyarrow.fs as pafs

from imgflow.runtime.errors import ConfigError, SourceError
from imgflow.runtime.network import first_contact

_DATE_FOLDER = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")

PART = "part:"  # the prefix of the merge stage's input names: one input per cleaned partition


NO_SLICE = "(none)"


def slice_of(record_id: str, key: str) -> str:
    """The value of the Hive partition ``key`` in a record's id (``date=2024-05-01/part-0.parquet#7``
    is in slice ``2024-05-01`` of ``date``), or ``NO_SLICE``: what ``[gate] slice_by`` groups by."""
    found = re.search(rf"(?:^|/){re.escape(key)}=([^/]+)/", record_id)
    return found.group(1) if found else NO_SLICE


@dataclass(frozen=True)
class Partition:
    date: dt.date
    source: str  # parquet:ROOT/date=YYYY-MM-DD


def _root(source: str) -> tuple[str, pafs.FileSystem, str]:
    scheme, _, location = source.partition(":")
    if scheme != "parquet" or not location:
        raise ConfigError(f"date partitions need a parquet: source with date=YYYY-MM-DD folders, not {source!r}")
    if "://" in location:
        filesystem, path = pafs.FileSystem.from_uri(location)
    else:
        filesystem, path = pafs.LocalFileSystem(), location
    return location.rstrip("/"), filesystem, path


def date_partitions(source: str) -> list[Partition]:
    """Every ``date=YYYY-MM-DD`` folder directly under the source's root, oldest first ([] if none)."""
    location, filesystem, path = _root(source)
    if "://" in location:
        info = first_contact(partial(filesystem.get_file_info, path), location=location, source=source)
    else:
        info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        return []
    found = []
    for entry in filesystem.get_file_info(pafs.FileSelector(path)):
        match = _DATE_FOLDER.match(entry.base_name)
        if entry.type == pafs.FileType.Directory and match:
            try:
                day = dt.date.fromisoformat(match.group(1))
            except ValueError:
                raise SourceError(f"partition folder {entry.path} does not name a real date") from None
            found.append(Partition(day, f"parquet:{location}/{entry.base_name}"))
    return sorted(found, key=lambda p: p.date)


def select(source: str, start: dt.date | None, end: dt.date | None) -> list[Partition]:
    """The partitions from ``start`` to ``end`` (both included; None: unbounded); a clear error if none."""
    if start and end and start > end:
        raise ConfigError(f"the backfill range is empty: start {start} is after end {end}")
    every = date_partitions(source)
    if not every:
        raise SourceError(f"{source} has no date=YYYY-MM-DD partition folders to backfill")
    chosen = [p for p in every if (start is None or p.date >= start) and (end is None or p.date <= end)]
    if not chosen:
        raise SourceError(
            f"{source} has no partition from {start or 'the first'} to {end or 'the last'}; "
            f"its partitions run from {every[0].date} to {every[-1].date}"
        )
    return chosen
