"""clean: decode and check every record, quarantine the bad ones with a reason, assign stable splits.

Output folder::

    records.parquet      kept records: id, label (int index into class_names), label_name,
                         split ("train" | "val" | "test"), sha256 (of the pixels), pixels (binary:
                         uint8, height x width x channels, row-major)
    quarantine.parquet   id, label_name, reason, detail, image (the original bytes, kept for inspection)
    report.json          counts per reason, per class and split, image sizes and modes
    report.md            the same for a person

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

import io
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from imgflow.config import CleanConfig
from imgflow.errors import SourceError
from imgflow.fingerprint import sha256_bytes, stable_hash
from imgflow.store import Stage, StageResult, write_json_atomic

SPLITS = ("train", "val", "test")
KEPT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("label", pa.int64()),
        ("label_name", pa.string()),
        ("split", pa.string()),
        ("sha256", pa.string()),
        ("pixels", pa.binary()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("label_name", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("image", pa.binary()),
    ]
)


@dataclass(frozen=True)
class Probe:
    """What the header of an image says, before any pixel is decoded."""

    size: tuple[int, int]  # (height, width)
    mode: str


class BadImage(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def probe(data: bytes) -> Probe:
    """Size and mode from the header; ``BadImage`` for empty files and files that are not images."""
    if not data:
        raise BadImage("empty", "zero bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return Probe(size=(image.height, image.width), mode=image.mode)
    except UnidentifiedImageError:
        raise BadImage("not_an_image", "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage("undecodable", str(exc) or type(exc).__name__) from None


def decode(data: bytes, size: tuple[int, int], channels: int) -> np.ndarray:
    """Fully decode an image to uint8 (height, width, channels); ``BadImage`` if any part is broken."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode in ("P", "PA", "LA", "RGBA") and channels == 3:
                # Composite transparency onto white rather than letting RGB conversion make it black.
                rgba = image.convert("RGBA")
                converted = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                converted.alpha_composite(rgba)
                image = converted
            image = image.convert("L" if channels == 1 else "RGB")
            if (image.height, image.width) != size:
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:
        raise BadImage("not_an_image", "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        message = str(exc) or type(exc).__name__
        reason = "truncated" if "truncated" in message.lower() else "undecodable"
        raise BadImage(reason, message) from None
    return array.reshape(size[0], size[1], channels)


def assign_split(content_sha: str, test_fraction: float, val_fraction: float, salt: str = "") -> str:
    """A split from a hash of the content alone: adding data never moves an existing record."""
    position = int(sha256_bytes(f"{salt}:{content_sha}".encode())[:16], 16) / 2.0**64
    if position < test_fraction:
        return "test"
    if position < test_fraction + val_fraction:
        return "val"
    return "train"


def natural_key(label: str) -> tuple[int, int | str]:
    """Sort "2" before "10", and numbers before words."""
    return (0, int(label)) if label.isdigit() else (1, label)


def _target_shape(config: CleanConfig, probes: Mapping[str, Probe]) -> tuple[tuple[int, int], int]:
    if config.image_size is not None:
        size = (int(config.image_size[0]), int(config.image_size[1]))
    else:
        size = Counter(p.size for p in probes.values()).most_common(1)[0][0]
    if config.channels is not None:
        if config.channels not in (1, 3):
            raise SourceError(f"channels must be 1 or 3, got {config.channels}")
        return size, config.channels
    grayscale = all(p.mode in ("1", "L", "I", "I;16", "F") for p in probes.values())
    return size, 1 if grayscale else 3


def _size_stats(size_counts: Mapping[str, int]) -> dict[str, Any]:
    """min/median/max height and width from ``{"HxW": count}``, which partitions can sum."""
    sizes = [tuple(int(n) for n in key.split("x")) for key, count in size_counts.items() for _ in range(count)]
    if not sizes:
        return {}
    heights, widths = [h for h, _ in sizes], [w for _, w in sizes]
    return {
        "height": {"min": min(heights), "median": statistics.median(heights), "max": max(heights)},
        "width": {"min": min(widths), "median": statistics.median(widths), "max": max(widths)},
    }


def content_conflicts(ids: list[str], labels: list[str], shas: list[str | None]) -> dict[str, tuple[str, str]]:
    """Duplicates and label conflicts among records with the same pixels (``sha256``; None: not an image).

    The first record of a group with one label is kept and the others are ``duplicate``; every record
    of a group seen under two labels is a ``label_conflict``.
    """
    by_content: dict[str, list[int]] = defaultdict(list)
    for position, sha in enumerate(shas):
        if sha is not None:
            by_content[sha].append(position)
    found: dict[str, tuple[str, str]] = {}
    for positions in by_content.values():
        if len({labels[p] for p in positions}) > 1:
            others = ", ".join(f"{ids[p]}={labels[p]!r}" for p in positions)
            found.update((ids[p], ("label_conflict", f"same image under different labels: {others}")) for p in positions)
        else:
            found.update((ids[p], ("duplicate", f"same image as {ids[positions[0]]}")) for p in positions[1:])
    return found


def _build(out_dir: Path, config: CleanConfig, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    raw = pq.read_table(inputs["raw"].file("records.parquet"))
    ids: list[str] = raw.column("id").to_pylist()
    images: list[bytes] = raw.column("image").to_pylist()
    labels: list[str] = raw.column("label").to_pylist()
    source = inputs["raw"].info.get("source", inputs["raw"].path)
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
    for record_id, data, label in zip(ids, images, labels, strict=True):
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


def write_clean_output(
    out_dir: Path,
    config: CleanConfig,
    *,
    source: str,
    records_in: int,
    kept: pa.Table,
    quarantined: pa.Table,
    class_names: list[str],
    image_shape: list[int],
    modes: Mapping[str, int],
    size_counts: Mapping[str, int],
) -> dict[str, Any]:
    """Write a clean table, its quarantine and report (the layout above); return the report.

    Checks the accounting (``records_in == kept + quarantined``) and that two classes are left.
    """
    if kept.num_rows + quarantined.num_rows != records_in:
        raise RuntimeError(f"clean lost records: {records_in} in, {kept.num_rows} kept, {quarantined.num_rows} quarantined")
    kept_names = kept.column("label_name").to_pylist()
    if len(set(kept_names)) < 2:
        raise SourceError(
            f"dataset source {source} has fewer than two classes with usable images "
            f"(classes kept: {sorted(set(kept_names)) or 'none'})"
        )
    pq.write_table(kept, out_dir / "records.parquet")
    pq.write_table(quarantined, out_dir / "quarantine.parquet")
    splits = kept.column("split").to_pylist()
    per_class_split = {name: dict.fromkeys(SPLITS, 0) for name in class_names}
    for name, split in zip(kept_names, splits, strict=True):
        per_class_split[name][split] += 1
    report = {
        "source": source,
        "records_in": records_in,
        "kept": kept.num_rows,
        "quarantined": quarantined.num_rows,
        "quarantine_reasons": dict(Counter(quarantined.column("reason").to_pylist()).most_common()),
        "image_shape": image_shape,
        "class_names": class_names,
        "splits": dict(Counter(splits)),
        "per_class": per_class_split,
        "source_images": {
            "modes": dict(Counter(modes).most_common()),
            "size_counts": dict(Counter(size_counts).most_common()),
            **_size_stats(size_counts),
        },
        "split_rule": {
            "test_fraction": config.test_fraction,
            "val_fraction": config.val_fraction,
            "salt": config.split_salt,
            "hash": "sha256 of the pixels",
        },
        "data_fingerprint": stable_hash(sorted(kept.column("sha256").to_pylist())),
    }
    write_json_atomic(out_dir / "report.json", report)
    sample = quarantined.slice(0, 20).select(["id", "label_name", "reason", "detail"]).to_pylist()
    (out_dir / "report.md").write_text(report_markdown(report, sample))
    return report


def report_markdown(report: Mapping[str, Any], quarantined: list[dict[str, str]]) -> str:
    """The data-quality report as Markdown, for the report file and the Prefect artifact."""
    lines = [
        f"# Data quality: {report['source']}",
        "",
        f"- records in: **{report['records_in']}**",
        f"- kept: **{report['kept']}**",
        f"- quarantined: **{report['quarantined']}**",
        f"- image shape after cleaning: {' x '.join(map(str, report['image_shape']))}",
        "- splits: " + ", ".join(f"{s} {report['splits'].get(s, 0)}" for s in SPLITS),
        "",
        "## Quarantine reasons",
        "",
        "| reason | records |",
        "|---|---|",
        *[f"| {reason} | {count} |" for reason, count in report["quarantine_reasons"].items()],
        "",
        "## Classes",
        "",
        "| class | train | val | test |",
        "|---|---|---|---|",
        *[
            f"| {name} | {counts['train']} | {counts['val']} | {counts['test']} |"
            for name, counts in report["per_class"].items()
        ],
        "",
        "## Source images",
        "",
        "- modes: " + ", ".join(f"{mode} {count}" for mode, count in report["source_images"]["modes"].items()),
        "- height min/median/max: {min}/{median}/{max}".format(**report["source_images"]["height"]),
        "- width min/median/max: {min}/{median}/{max}".format(**report["source_images"]["width"]),
    ]
    if quarantined:
        lines += ["", f"## Quarantined records (first {len(quarantined)})", "", "| id | label | reason | detail |", "|---|---|---|---|"]
        lines += [f"| {r['id']} | {r['label_name']} | {r['reason']} | {r['detail'][:120]} |" for r in quarantined]
    return "\n".join(lines) + "\n"


CLEAN = Stage("clean", "2", _build)
