"""``parquet:PATH_OR_URI``: a Parquet file, or a folder of them, with an image-bytes and a label column.

Options (a dataset spec's ``[options]``): ``image_column`` (default ``image``; binary, or a struct with a
``bytes`` field as Hugging Face datasets write it), ``label_column`` (default ``label``; strings or
integers; None for unlabelled images), ``id_column`` (default ``id`` when the table has one), ``text_column``
(a string or binary column of text per image: captions, titles; unset: no text). Without an id column a record's id is
its file's path and row number.

A folder is read recursively with Hive partitions (``date=2024-05-01/part-0.parquet``); files whose name
starts with ``.`` or ``_`` (``_SUCCESS``, ``_metadata``) are not data. Paths are local, or any URI
pyarrow's filesystems understand (``file://``, ``s3://``, ``gs://``, ``hdfs://``). Pointing at one
partition (``parquet:ROOT/date=2024-05-01``) gives the same ids as reading it through its root, so
partitions can be read one by one and unioned.

Every file's footer is read when the source is opened, so a file that is not Parquet or lacks a
configured column fails before any work starts, naming the file and the column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from imgflow.data.sources.record import RawRecord, text_option
from imgflow.data.tables import open_parquet, row_group_chunks
from imgflow.runtime.errors import SourceError
from imgflow.runtime.network import first_contact
from imgflow.store.fingerprint import stable_hash

_FORMAT = "1"
_BATCH = 512


def _open_filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in location:
        return pafs.LocalFileSystem(), str(PurePosixPath(location).as_posix())
    try:
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise SourceError(f"cannot open Parquet location {location}: {exc}") from None


def is_partition(part: str) -> bool:
    """A Hive partition folder name such as ``date=2024-05-01``."""
    key, sep, value = part.partition("=")
    return bool(sep and key and value)


def partition_values(relative: str) -> dict[str, str]:
    """``{"date": "2024-05-01"}`` from a path such as ``date=2024-05-01/part-0.parquet``."""
    return dict(part.split("=", 1) for part in PurePosixPath(relative).parts[:-1] if is_partition(part))


class ParquetSource:
    def __init__(self, location: str, options: Mapping[str, Any]) -> None:
        if not location:
            raise SourceError("a Parquet source needs a path or URI: parquet:PATH_OR_URI, e.g. parquet:data/images")
        self.spec = f"parquet:{location}"
        self.image_column = str(options.get("image_column", "image"))
        label_column = options.get("label_column", "label")  # None: unlabelled images (batch prediction)
        self.label_column = None if label_column is None else str(label_column)
        self.text_column = text_option(options, "text_column")
        self.has_text = self.text_column is not None
        self.filesystem, path = _open_filesystem(location)
        if "://" in location:
            info = first_contact(partial(self.filesystem.get_file_info, path), location=location, source=self.spec)
        else:
            info = self.filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise SourceError(f"Parquet source {location} does not exist")
        if info.type == pafs.FileType.File:
            paths = [path]
        else:
            selector = pafs.FileSelector(path, recursive=True)
            paths = sorted(
                found.path
                for found in self.filesystem.get_file_info(selector)
                if found.type == pafs.FileType.File
                and not any(part.startswith((".", "_")) for part in PurePosixPath(found.path).relative_to(path).parts)
            )
            if not paths:
                raise SourceError(f"Parquet source {location} is empty: the folder holds no Parquet files")
        # Ids are relative to the dataset's root: the given path without its trailing partition folders.
        root = PurePosixPath(path) if info.type != pafs.FileType.File else PurePosixPath(path).parent
        while is_partition(root.name):
            root = root.parent
        self.files = {str(PurePosixPath(p).relative_to(root)): p for p in paths}
        self.id_column = self._check_columns(options.get("id_column"))

    def _check_columns(self, id_column: Any) -> str | None:
        """Read every footer: each file must be Parquet and hold the configured columns."""
        has_id = True
        for relative, path in self.files.items():
            try:
                schema = pq.read_schema(path, filesystem=self.filesystem)
            except (pa.ArrowInvalid, OSError) as exc:
                raise SourceError(f"{path} in Parquet source {self.spec} is not a readable Parquet file: {exc}") from None
            names = set(schema.names) | set(partition_values(relative))
            for role, column in (("image", self.image_column), ("label", self.label_column), ("text", self.text_column)):
                if column is not None and column not in names:
                    raise SourceError(
                        f"{path} has no {role} column {column!r} (columns: {', '.join(schema.names)}); "
                        f"set {role}_column in the dataset spec's [options]"
                    )
            if self.text_column in schema.names and not _is_text_type(schema.field(self.text_column).type):
                raise SourceError(
                    f"{path}: the text column {self.text_column!r} holds {schema.field(self.text_column).type}, not text (string or binary)"
                )
            image_type = schema.field(self.image_column).type if self.image_column in schema.names else None
            if image_type is None or not _is_image_type(image_type):
                raise SourceError(
                    f"{path}: the image column {self.image_column!r} holds {image_type or 'partition values'}, "
                    "not image bytes (binary, or a struct with a 'bytes' field)"
                )
            if id_column is not None and id_column not in names:
                raise SourceError(f"{path} has no id column {id_column!r} (columns: {', '.join(schema.names)})")
            has_id = has_id and "id" in names
        if id_column is not None:
            return str(id_column)
        return "id" if has_id else None

    def fingerprint(self) -> str:
        digests = []
        for relative, path in self.files.items():
            digest = hashlib.sha256()
            with self.filesystem.open_input_stream(path) as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
            digests.append((relative, digest.hexdigest()))
        text = [self.text_column] if self.has_text else []
        return stable_hash([_FORMAT, self.image_column, self.label_column, self.id_column, digests, *text])

    def pieces(self, rows: int | None = None) -> list[ParquetPiece]:
        """The source as pieces in record order: a piece per file (``rows`` None), or runs of a file's
        consecutive row groups of about ``rows`` records each (reads every footer), which worker
        processes, or Dask workers that reach the same filesystem, read on their own."""
        columns = (self.image_column, self.label_column, self.id_column, self.text_column)
        if rows is None:
            return [ParquetPiece(self.filesystem, relative, path, None, 0, None, *columns) for relative, path in self.files.items()]
        found = []
        for relative, path in self.files.items():
            metadata = open_parquet(path, self.filesystem).metadata
            first = 0
            for groups in row_group_chunks(metadata, rows):
                count = sum(metadata.row_group(g).num_rows for g in groups)
                found.append(ParquetPiece(self.filesystem, relative, path, tuple(groups), first, count, *columns))
                first += count
        return found

    def records(self) -> Iterator[RawRecord]:
        for piece in self.pieces():
            yield from piece.records()


@dataclass(frozen=True)
class ParquetPiece:
    """Row groups of one file of a Parquet source (all of them: ``groups`` None), with the columns to
    read: picklable, so a worker process reads its piece itself."""

    filesystem: pafs.FileSystem
    relative: str  # the file's path from the dataset's root: ids and partition values come from it
    path: str
    groups: tuple[int, ...] | None
    first_row: int  # the row number, in the file, of the piece's first record
    rows: int | None  # how many records it holds (None: not read yet)
    image_column: str
    label_column: str | None
    id_column: str | None
    text_column: str | None

    def records(self) -> Iterator[RawRecord]:
        partitions = partition_values(self.relative)
        wanted = (self.image_column, self.label_column, self.id_column, self.text_column)
        columns = list(dict.fromkeys(c for c in wanted if c and c not in partitions))
        parquet = open_parquet(self.path, self.filesystem)
        row = self.first_row
        for batch in parquet.iter_batches(batch_size=_BATCH, columns=columns, row_groups=self.groups):
            images = _image_bytes(batch.column(self.image_column))
            labels = _column(batch, self.label_column, partitions) if self.label_column else [None] * batch.num_rows
            ids = _column(batch, self.id_column, partitions) if self.id_column else None
            texts = _text(batch, self.text_column, partitions) if self.text_column else [None] * batch.num_rows
            for offset in range(batch.num_rows):
                label = labels[offset]
                yield RawRecord(
                    id=str(ids[offset]) if ids else f"{self.relative}#{row + offset}",
                    image=images[offset],
                    label="" if label is None else str(label),
                    text=texts[offset],
                )
            row += batch.num_rows


def _column(batch: pa.RecordBatch, name: str, partitions: Mapping[str, str]) -> list[Any]:
    if name in partitions:
        return [partitions[name]] * batch.num_rows
    return batch.column(name).to_pylist()


def _text(batch: pa.RecordBatch, name: str, partitions: Mapping[str, str]) -> list[bytes | None]:
    """Each row's text as bytes (None: null), unchecked: cleaning decides whether it is UTF-8."""
    if name in partitions:
        return [partitions[name].encode()] * batch.num_rows
    return batch.column(name).cast(pa.large_binary()).to_pylist()


def _is_text_type(kind: pa.DataType) -> bool:
    return any(test(kind) for test in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary))


def _is_image_type(kind: pa.DataType) -> bool:
    if pa.types.is_struct(kind):
        index = kind.get_field_index("bytes")
        return index >= 0 and _is_image_type(kind.field(index).type)
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _image_bytes(column: pa.Array) -> list[bytes]:
    """The encoded image bytes of each row; a null image is empty bytes, quarantined by cleaning."""
    if pa.types.is_struct(column.type):
        column = column.field("bytes")
    return [value or b"" for value in column.to_pylist()]
