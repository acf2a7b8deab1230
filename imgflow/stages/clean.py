"""clean: decode and check every record, quarantine the bad ones with a reason, assign stable splits.

Output folder: the clean-table layout of ``imgflow.data.cleantable`` (records.parquet, quarantine.parquet,
report.json, report.md).

Quarantine reasons: ``unlabeled`` (no class), ``empty`` (zero bytes), ``not_an_image``, ``truncated``,
``undecodable`` (any other decoder failure, or a header declaring no area), ``too_large`` (a header
declaring more than ``[clean] max_pixels`` pixels), ``unknown_label`` (not in the spec's class_names), ``bad_text`` (the record's
text is not UTF-8), ``duplicate`` (same content as an earlier record with the same label), ``label_conflict`` (same
content under different labels).

Text (when the raw table has a ``text`` column: the source was configured to read it) is normalized
(``imgflow.data.text.normalize``: NFC, single spaces); an empty or missing text is kept, and counted. A
record's content is its pixels and its text: a changed caption is a changed record (its ``sha256``),
and duplicates are the same pixels with the same text. Its split still comes from the pixels alone, so
a new caption never moves an image between splits.

Nothing is dropped silently: ``records_in == kept + quarantined``. Every image is decoded, converted to
the spec's channels and resized to its size. Exact duplicates (same pixels after that) keep their first
record; an image seen under two labels is quarantined in every copy. A record's split comes from a hash
of its pixels: adding data never moves an old record between splits, and no image is in train and test.

How, at any size: the raw table is cut into chunks of row groups, and worker processes
(``imgflow.runtime.parallel``) scan them: each record's header is read and, once the target shape is known,
its pixels decoded into a chunk file in a scratch folder. Only compact keys come back (id, label,
header, content hash or quarantine reason), so memory holds one chunk per worker, never the dataset.
When the spec fixes ``image_size`` and ``channels`` one pass does both; otherwise a first pass reads
every header (the most common size, whether every image is grayscale), a second decodes. Duplicates
and conflicts are found on the content hashes, then the chunks are written out in order: a parallel
run's output is byte-identical to a serial one's. With ``IMGFLOW_TASK_RUNNER=dask[:ADDRESS]`` the
chunks run on a Dask cluster instead (``imgflow.runtime.parallel.cluster_pool``), reading the raw table from,
and writing the chunks to, the object-store root when there is one (``imgflow.store.scratch.shared_scratch``).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imgflow.config import CleanConfig
from imgflow.data.cleantable import QUARANTINE_SCHEMA, CleanTableWriter, assign_split, natural_key
from imgflow.data.images import GRAYSCALE_MODES, Header
from imgflow.data.recordkeys import FirstCopies, content_conflicts
from imgflow.data.scan import Scan, scan_chunk
from imgflow.data.tables import open_parquet, read_scratch, row_group_chunks
from imgflow.results import CleanInfo, DownloadInfo, StageResult
from imgflow.runtime import progress
from imgflow.runtime.errors import SourceError
from imgflow.runtime.parallel import cluster_pool, dask_address, ordered_map
from imgflow.stages.stage import Stage
from imgflow.store.scratch import shared_scratch

CHUNK_ROWS = 4096  # records a worker takes at once: about 50 MB of 64x64 RGB pixels


def _target_shape(config: CleanConfig, headers_seen: Mapping[Header, int]) -> tuple[tuple[int, int], int]:
    """The (height, width) and channels every image becomes: the spec's, else the headers' majority
    (``headers_seen``: how many records had each header)."""
    if config.image_size is not None:
        size = (int(config.image_size[0]), int(config.image_size[1]))
    else:
        sizes: Counter[tuple[int, int]] = Counter()
        for found, count in headers_seen.items():
            sizes[found.size] += count
        size = sizes.most_common(1)[0][0]
    if config.channels is not None:
        if config.channels not in (1, 3):
            raise SourceError(f"channels must be 1 or 3, got {config.channels}")
        return size, config.channels
    return size, 1 if all(p.mode in GRAYSCALE_MODES for p in headers_seen) else 3


@dataclass(frozen=True)
class _Chunks:
    """The raw table cut into chunks: each chunk's row groups and the position of its first record."""

    raw_path: str  # a local path or a URI
    groups: list[list[int]]
    starts: list[int]
    sizes: list[int]
    scratch: str  # a local folder or a URI
    pool: Any = None  # the worker pool both passes share (None: this process)
    with_text: bool = False  # the raw table has a text column
    relabel: Mapping[str, str] | None = None  # corrected labels by record id ([clean] labels)

    @classmethod
    def of(cls, raw_path: str, scratch: str, pool: Any) -> _Chunks:
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


class _Assembly:
    """Writes the clean table chunk by chunk, in order, once each record's fate is known.

    Duplicates are decided on the fly (the first copy of an image stays), so chunks can be written
    while the workers still decode later ones. A label conflict cannot: it quarantines every copy,
    earlier ones included. If one turns up (or the class list is only known at the end), the
    assembly waits for the whole scan and writes everything then, with ``content_conflicts``;
    either way the bytes written are the same.
    """

    def __init__(
        self, out_dir: Path, config: CleanConfig, parts: _Chunks, raw: pq.ParquetFile, names: list[str] | None, channels: int
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


def _build(out_dir: Path, config: CleanConfig, inputs: Mapping[str, StageResult]) -> CleanInfo:
    raw_info = inputs["raw"].info
    source = raw_info.source if isinstance(raw_info, DownloadInfo) else inputs["raw"].path
    raw_path = str(inputs["raw"].file("records.parquet"))
    raw = open_parquet(raw_path)
    if dask_address() is not None:
        # Workers on other machines read the raw table and write their chunks where all can reach:
        # the object-store root when there is one.
        if inputs["raw"].uri is not None:
            raw_path = f"{inputs['raw'].uri}/records.parquet"
        scratch = shared_scratch(out_dir)
    else:
        scratch = str(out_dir / ".chunks")
        Path(scratch).mkdir()
    # Decoded pixels, chunk by chunk: removed before the output is complete (by the store, remotely).
    with cluster_pool(len(row_group_chunks(raw.metadata, CHUNK_ROWS))) as pool:
        parts = dataclasses.replace(_Chunks.of(raw_path, scratch, pool), relabel=dict(config.relabel) or None)
        info = _clean(out_dir, config, parts, raw, source)
    if "://" not in scratch:
        shutil.rmtree(scratch)
    return info


def _clean(out_dir: Path, config: CleanConfig, parts: _Chunks, raw: pq.ParquetFile, source: str) -> CleanInfo:
    """Scan (one pass or two), then assemble: see the module docstring."""
    total = raw.metadata.num_rows
    # With the shape fixed by the spec, one pass reads headers and decodes; else the headers decide it first.
    target = _target_shape(config, {}) if config.image_size is not None and config.channels is not None else None
    class_names = list(config.class_names) if config.class_names else None
    assembly = _Assembly(out_dir, config, parts, raw, class_names, target[1]) if target is not None else None
    scan = parts.scan(target, class_names, config.max_pixels, "images", assembly.on_chunk if assembly else None)
    headers_seen = scan.header_counts()
    if not headers_seen:
        examples = "; ".join(f"{scan.keys.id(p)}: {reason} ({detail})" for p, (reason, detail) in list(scan.reasons.items())[:3])
        raise SourceError(f"dataset source {source} has no decodable image among its {total} records, e.g. {examples}")
    if class_names is None:
        class_names = sorted(scan.keys.labels.counts(where=scan.headers.codes() >= 0), key=natural_key)
    if target is None:
        target = _target_shape(config, headers_seen)
        assembly = _Assembly(out_dir, config, parts, raw, class_names, target[1])
        del scan  # the first pass's keys: the second pass finds them again
        scan = parts.scan(target, class_names, config.max_pixels, "images decoded", assembly.on_chunk)
    assert assembly is not None
    modes: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for found, count in headers_seen.items():  # in order of first appearance, as record by record
        modes[found.mode] += count
        sizes[f"{found.size[0]}x{found.size[1]}"] += count
    relabeled = 0
    if config.relabel:  # how many records the labels file corrected (it may name records this source lacks)
        ids = raw.read(columns=["id"]).column("id")
        relabeled = int(pc.sum(pc.is_in(ids, value_set=pa.array([record for record, _ in config.relabel]))).as_py() or 0)
    return assembly.finish(
        scan,
        class_names,
        image_shape=[target[0][0], target[0][1], target[1]],
        source=source,
        modes=modes,
        size_counts=sizes,
        relabeled=relabeled,
    )


CLEAN = Stage("clean", "6", _build)
