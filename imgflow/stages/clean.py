"""clean: decode and check every record, quarantine the bad ones with a reason, assign stable splits.

Output folder: the clean-table layout of ``imgflow.cleantable`` (records.parquet, quarantine.parquet,
report.json, report.md).

Quarantine reasons: ``unlabeled`` (no class), ``empty`` (zero bytes), ``not_an_image``, ``truncated``,
``undecodable``, ``unknown_label`` (not in the spec's class_names), ``duplicate`` (same pixels as an
earlier record with the same label), ``label_conflict`` (same pixels under different labels).

Nothing is dropped silently: ``records_in == kept + quarantined``. Every image is decoded, converted to
the spec's channels and resized to its size. Exact duplicates (same pixels after that) keep their first
record; an image seen under two different labels is quarantined in every copy. A record's split comes
from a hash of its pixels, so adding data never moves an old record between splits, and an image can
never sit in both train and test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from imgflow import progress
from imgflow.cleantable import KEPT_SCHEMA, QUARANTINE_SCHEMA, assign_split, content_conflicts, natural_key, write_clean_output
from imgflow.config import CleanConfig
from imgflow.errors import SourceError
from imgflow.fingerprint import sha256_bytes
from imgflow.images import GRAYSCALE_MODES, BadImage, Probe, decode, probe
from imgflow.results import CleanInfo, DownloadInfo, StageResult
from imgflow.store import Stage


def _target_shape(config: CleanConfig, probes: Mapping[str, Probe]) -> tuple[tuple[int, int], int]:
    if config.image_size is not None:
        size = (int(config.image_size[0]), int(config.image_size[1]))
    else:
        size = Counter(p.size for p in probes.values()).most_common(1)[0][0]
    if config.channels is not None:
        if config.channels not in (1, 3):
            raise SourceError(f"channels must be 1 or 3, got {config.channels}")
        return size, config.channels
    grayscale = all(p.mode in GRAYSCALE_MODES for p in probes.values())
    return size, 1 if grayscale else 3


def _build(out_dir: Path, config: CleanConfig, inputs: Mapping[str, StageResult]) -> CleanInfo:
    raw = pq.read_table(inputs["raw"].file("records.parquet"))
    ids: list[str] = raw.column("id").to_pylist()
    images: list[bytes] = raw.column("image").to_pylist()
    labels: list[str] = raw.column("label").to_pylist()
    raw_info = inputs["raw"].info
    source = raw_info.source if isinstance(raw_info, DownloadInfo) else inputs["raw"].path
    quarantine: dict[str, tuple[str, str]] = {}  # id -> (reason, detail)

    probes: dict[str, Probe] = {}
    for record_id, data, label in zip(ids, images, labels, strict=True):
        if not label:
            quarantine[record_id] = ("unlabeled", "no label: the record has no class (e.g. a file outside any class folder)")
            continue
        try:
            probes[record_id] = probe(data)
        except BadImage as bad:
            quarantine[record_id] = (bad.reason, bad.detail)
    if not probes:
        examples = "; ".join(f"{record_id}: {reason} ({detail})" for record_id, (reason, detail) in list(quarantine.items())[:3])
        raise SourceError(f"dataset source {source} has no decodable image among its {len(ids)} records, e.g. {examples}")
    size, channels = _target_shape(config, probes)

    class_names = list(config.class_names) if config.class_names else sorted(
        {label for record_id, label in zip(ids, labels, strict=True) if record_id in probes}, key=natural_key
    )
    class_index = {name: index for index, name in enumerate(class_names)}
    decoded: dict[str, tuple[str, bytes]] = {}  # id -> (sha256, pixels)
    for position, (record_id, data, label) in enumerate(zip(ids, images, labels, strict=True)):
        if position % 1024 == 0:
            progress.report(position, len(ids), "images")
        if record_id in quarantine:
            continue
        if label not in class_index:
            quarantine[record_id] = ("unknown_label", f"label {label!r} is not one of the spec's class_names")
            continue
        try:
            pixels = decode(data, size, channels).tobytes()
        except BadImage as bad:
            quarantine[record_id] = (bad.reason, bad.detail)
            continue
        decoded[record_id] = (sha256_bytes(pixels), pixels)
    progress.report(len(ids), len(ids), "images")
    quarantine.update(content_conflicts(ids, labels, [decoded[i][0] if i in decoded else None for i in ids]))

    kept_positions = [p for p, record_id in enumerate(ids) if record_id in decoded and record_id not in quarantine]
    kept = {
        "id": [ids[p] for p in kept_positions],
        "label": [class_index[labels[p]] for p in kept_positions],
        "label_name": [labels[p] for p in kept_positions],
        "split": [
            assign_split(decoded[ids[p]][0], config.test_fraction, config.val_fraction, config.split_salt)
            for p in kept_positions
        ],
        "sha256": [decoded[ids[p]][0] for p in kept_positions],
        "pixels": [decoded[ids[p]][1] for p in kept_positions],
    }
    bad_positions = [p for p, record_id in enumerate(ids) if record_id in quarantine]
    quarantined = {
        "id": [ids[p] for p in bad_positions],
        "label_name": [labels[p] for p in bad_positions],
        "reason": [quarantine[ids[p]][0] for p in bad_positions],
        "detail": [quarantine[ids[p]][1] for p in bad_positions],
        "image": [images[p] for p in bad_positions],
    }
    return write_clean_output(
        out_dir,
        config,
        source=source,
        records_in=len(ids),
        kept=pa.table(kept, schema=KEPT_SCHEMA),
        quarantined=pa.table(quarantined, schema=QUARANTINE_SCHEMA),
        class_names=class_names,
        image_shape=[size[0], size[1], channels],
        modes=Counter(p.mode for p in probes.values()),
        size_counts=Counter(f"{p.size[0]}x{p.size[1]}" for p in probes.values()),
    )


CLEAN = Stage("clean", "2", _build)
