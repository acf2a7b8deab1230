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
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imgflow.config import CleanConfig
from imgflow.data.assembly import Assembly, Chunks
from imgflow.data.cleantable import natural_key
from imgflow.data.images import GRAYSCALE_MODES, Header
from imgflow.data.tables import open_parquet
from imgflow.results import CleanInfo, DownloadInfo, StageResult
from imgflow.runtime.errors import SourceError
from imgflow.runtime.parallel import cluster_pool, dask_address
from imgflow.store.scratch import shared_scratch
from imgflow.store.stage import Stage


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
    with cluster_pool(Chunks.count(raw)) as pool:
        parts = dataclasses.replace(Chunks.of(raw_path, scratch, pool), relabel=dict(config.relabel) or None)
        info = _clean(out_dir, config, parts, raw, source)
    if "://" not in scratch:
        shutil.rmtree(scratch)
    return info


def _clean(out_dir: Path, config: CleanConfig, parts: Chunks, raw: pq.ParquetFile, source: str) -> CleanInfo:
    """Scan (one pass or two), then assemble: see the module docstring."""
    total = raw.metadata.num_rows
    # With the shape fixed by the spec, one pass reads headers and decodes; else the headers decide it first.
    target = _target_shape(config, {}) if config.image_size is not None and config.channels is not None else None
    class_names = list(config.class_names) if config.class_names else None
    assembly = Assembly(out_dir, config, parts, raw, class_names, target[1]) if target is not None else None
    scan = parts.scan(target, class_names, config.max_pixels, "images", assembly.on_chunk if assembly else None)
    headers_seen = scan.header_counts()
    if not headers_seen:
        examples = "; ".join(f"{scan.keys.id(p)}: {reason} ({detail})" for p, (reason, detail) in list(scan.reasons.items())[:3])
        raise SourceError(f"dataset source {source} has no decodable image among its {total} records, e.g. {examples}")
    if class_names is None:
        class_names = sorted(scan.keys.labels.counts(where=scan.headers.codes() >= 0), key=natural_key)
    if target is None:
        target = _target_shape(config, headers_seen)
        assembly = Assembly(out_dir, config, parts, raw, class_names, target[1])
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
