"""The clean stage's work at any size: the raw table cut into chunks (``Chunks``) that worker processes
scan in parallel (``imgflow.data.scan``), and the clean table written chunk by chunk, in order, once
each record's fate is known (``Assembly``). ``imgflow.stages.clean`` decides what to keep; this module
keeps memory at one chunk per worker whatever the table's size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgflow.config import CleanConfig
from imgflow.data.cleantable import QUARANTINE_SCHEMA, CleanTableWriter, assign_split
from imgflow.data.recordkeys import FirstCopies, content_conflicts
from imgflow.data.scan import Scan, scan_chunk
from imgflow.data.tables import open_parquet, read_scratch, row_group_chunks
from imgflow.results import CleanInfo
from imgflow.runtime import progress
from imgflow.runtime.parallel import ordered_map

CHUNK_ROWS = 4096  # records a worker takes at once: about 50 MB of 64x64 RGB pixels


@dataclass(frozen=True)
class Chunks:
    """The raw table cut into chunks: each chunk's row groups and the position of its first record."""

    raw_path: str  # a local path or a URI
    groups: list[list[int]]
    starts: list[int]
    sizes: list[int]
    scratch: str  # a local folder or a URI
    pool: Any = None  # the worker pool both passes share (None: this process)
    with_text: bool = False  # the raw table has a text column
    relabel: Mapping[str, str] | None = None  # corrected labels by record id ([clean] labels)

    @staticmethod
    def count(raw: pq.ParquetFile) -> int:
        """How many chunks ``raw`` is cut into (what sizes a pool for it)."""
        return len(row_group_chunks(raw.metadata, CHUNK_ROWS))

    @classmethod
    def of(cls, raw_path: str, scratch: str, pool: Any) -> Chunks:
        raw = open_parquet(raw_path)
        metadata = raw.metadata
        groups = row_group_chunks(metadata, CHUNK_ROWS)
        sizes = [sum(metadata.row_group(g).num_rows for g in chunk) for chunk in groups]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return cls(raw_path, groups, starts, sizes, scratch, pool, "text" in raw.schema_arrow.names)

    def decoded(self, index: int) -> str:
        return f"{self.scratch}/chunk-{index:05d}.arrow"

    def scan(
        self,
        target: tuple[tuple[int, int], int] | None,
        class_names: list[str] | None,
        max_pixels: int,
        unit: str,
        then: Callable[[int, Scan, int], None] | None = None,
    ) -> Scan:
        """Scan every chunk (in parallel; decoding too when ``target`` is known): the records in order.
        ``then(number, scan, start)`` runs on each chunk as soon as it and every chunk before it are
        in, while the workers go on with the next ones."""
        jobs = [
            (
                self.raw_path,
                chunk,
                target,
                class_names,
                self.decoded(i) if target else None,
                self.starts[i],
                max_pixels,
                self.with_text,
                self.relabel,
            )
            for i, chunk in enumerate(self.groups)
        ]
        scan = Scan(sum(self.sizes))
        for number, found in enumerate(ordered_map(scan_chunk, jobs, self.pool)):
            start = len(scan)
            scan.extend(found)
            progress.report(len(scan), sum(self.sizes), unit)
            if then is not None:
                then(number, scan, start)
        return scan


class Assembly:
    """Writes the clean table chunk by chunk, in order, once each record's fate is known.

    Duplicates are decided on the fly (the first copy of an image stays), so chunks can be written
    while the workers still decode later ones. A label conflict cannot: it quarantines every copy,
    earlier ones included. If one turns up (or the class list is only known at the end), the
    assembly waits for the whole scan and writes everything then, with ``content_conflicts``;
    either way the bytes written are the same.
    """

    def __init__(
        self, out_dir: Path, config: CleanConfig, parts: Chunks, raw: pq.ParquetFile, names: list[str] | None, channels: int
    ) -> None:
        self.out_dir, self.config, self.parts, self.raw, self.channels = out_dir, config, parts, raw, channels
        self.first_copies: FirstCopies | None = None
        self.written = 0  # chunks written on the fly
        self.class_names, self.writer = names, self._writer(names) if names is not None else None

    def _writer(self, class_names: list[str]) -> CleanTableWriter:
        return CleanTableWriter(self.out_dir, self.config, class_names, self.channels, self.parts.with_text)

    def on_chunk(self, number: int, scan: Scan, start: int) -> None:
        if self.writer is None or self.written != number:
            return  # writing on the fly was given up: the end writes everything
        keys = scan.keys
        if self.first_copies is None:
            self.first_copies = FirstCopies(keys)
        positions = start + np.flatnonzero(keys.has_digest()[start:])
        firsts = self.first_copies.add(positions)
        labels = keys.labels.codes()
        duplicates = {}
        for position, first in zip(positions.tolist(), firsts.tolist(), strict=True):
            if first == position:
                continue
            first_id = keys.id(first)
            if labels[first] != labels[position] or first_id == keys.id(position):
                # A label conflict (earlier chunks may change), or a repeated id (conflicts are
                # decided per id): write at the end, with the whole picture.
                return
            duplicates[position] = ("duplicate", f"same image as {first_id}")
        self._write(number, scan, {**scan.reasons, **duplicates})
        self.written += 1

    def finish(self, scan: Scan, class_names: list[str], image_shape: list[int], **report: Any) -> CleanInfo:
        if self.written != len(self.parts.groups):
            # Start over from the scratch chunks with the whole picture.
            if self.writer is not None:
                self.writer.__exit__()
            self.class_names, self.writer = class_names, self._writer(class_names)
            quarantine = dict(scan.reasons)
            found = content_conflicts(scan.keys)
            if found:
                for number, start in enumerate(self.parts.starts):
                    ids = scan.keys.ids_between(start, start + self.parts.sizes[number])
                    quarantine.update((start + offset, found[i]) for offset, i in enumerate(ids) if i in found)
            for number in range(len(self.parts.groups)):
                self._write(number, scan, quarantine)
        assert self.writer is not None
        with self.writer:
            return self.writer.finish(records_in=len(scan), image_shape=image_shape, **report)

    def _write(self, number: int, scan: Scan, quarantine: Mapping[int, tuple[str, str]]) -> None:
        """One chunk's kept records (decoded pixels from its scratch file) and quarantined ones
        (their original bytes from the raw table)."""
        assert self.writer is not None and self.class_names is not None
        config, start, size = self.config, self.parts.starts[number], self.parts.sizes[number]
        index = {name: i for i, name in enumerate(self.class_names)}
        decoded = read_scratch(self.parts.decoded(number))
        positions = decoded.column("position").to_pylist()
        keep = [i for i, position in enumerate(positions) if position not in quarantine]
        kept = [positions[i] for i in keep]
        pixels = decoded.column("pixels")
        if len(keep) < len(positions):
            pixels = pixels.take(pa.array(keep, pa.int64()))
        keys = scan.keys
        ids = keys.ids_between(start, start + size)
        labels = [keys.labels.names[code] for code in keys.labels.codes()[start : start + size].tolist()]
        shas = [digest.tobytes().hex() for digest in keys.digests()[kept]]
        # The split hashes the pixels alone: with text, their own hash (the record's covers the text).
        pixel_shas = shas
        text = {}
        if self.parts.with_text:
            chosen = pa.array(keep, pa.int64())
            pixel_shas = [digest.hex() for digest in decoded.column("pixels_sha256").take(chosen).to_pylist()]
            text = {"text": decoded.column("text").take(chosen)}
        self.writer.write_kept(
            pa.table(
                {
                    "id": [ids[p - start] for p in kept],
                    "label": [index[labels[p - start]] for p in kept],
                    "label_name": [labels[p - start] for p in kept],
                    "split": [assign_split(sha, config.test_fraction, config.val_fraction, config.split_salt) for sha in pixel_shas],
                    "sha256": shas,
                    "pixels": pixels,
                    **text,
                }
            )
        )
        bad = [p for p in range(start, start + size) if p in quarantine]
        if bad:
            images = self.raw.read_row_groups(self.parts.groups[number], columns=["image"]).column("image")
            self.writer.write_quarantined(
                pa.table(
                    {
                        "id": [ids[p - start] for p in bad],
                        "label_name": [labels[p - start] for p in bad],
                        "reason": [quarantine[p][0] for p in bad],
                        "detail": [quarantine[p][1] for p in bad],
                        "image": images.take([p - start for p in bad]),  # the original bytes, kept for inspection
                    },
                    schema=QUARANTINE_SCHEMA,
                )
            )
