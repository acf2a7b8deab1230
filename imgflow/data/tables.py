"""Reading Parquet a piece at a time, without keeping what was read; scratch tables in Arrow's own format.

``pq.ParquetFile`` pre-buffers the column chunks it reads by default and keeps them as long as the
file object lives: iterating a table batch by batch then holds the whole table. Every streaming reader here opens its tables with
``open_parquet`` instead, which reads through a small buffer and keeps nothing.

A table one process writes for another to read once (clean's decoded chunks) goes through Arrow's
IPC file format instead (``write_scratch`` / ``read_scratch``): writing is a copy, and reading a local
file maps it, with no copy at all, where Parquet decodes every page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

_BUFFER = 1 << 20


def open_parquet(path: str | Path, filesystem: Any = None) -> pq.ParquetFile:
    """A Parquet file to read row group by row group, or batch by batch, in bounded memory."""
    return pq.ParquetFile(str(path), filesystem=filesystem, pre_buffer=False, buffer_size=_BUFFER)


def row_group_chunks(metadata: pq.FileMetaData, rows: int) -> list[list[int]]:
    """A Parquet file's row groups as runs of consecutive groups of about ``rows`` records each: the
    units of work a pool's processes read on their own (a group larger than ``rows`` is a run alone)."""
    found: list[list[int]] = []
    size = 0
    for index in range(metadata.num_row_groups):
        if not found or size >= rows:
            found.append([])
            size = 0
        found[-1].append(index)
        size += metadata.row_group(index).num_rows
    return found


def open_output(where: str) -> pa.NativeFile:
    """A file to write at ``where``, a local path or a URI (on an object store the object appears
    when the stream is closed)."""
    if "://" in where:
        filesystem, path = pafs.FileSystem.from_uri(where)
        return filesystem.open_output_stream(path)
    return pa.OSFile(where, "wb")


def write_scratch(table: pa.Table, where: str) -> None:
    """``table`` as an uncompressed Arrow IPC file at ``where``: a local path or a URI."""
    with open_output(where) as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_scratch(where: str) -> pa.Table:
    """A table ``write_scratch`` wrote; a local file is memory-mapped (its pages are read as used)."""
    if "://" in where:
        filesystem, path = pafs.FileSystem.from_uri(where)
        with filesystem.open_input_file(path) as source:
            return pa.ipc.open_file(source).read_all()
    with pa.memory_map(where) as source:
        return pa.ipc.open_file(source).read_all()
