"""The clean-table contract: the layout both ``clean`` and ``merge`` write, and the rules they share.

Folder layout::

    records.parquet      kept records: id, label (int index into class_names), label_name,
                         split ("train" | "val" | "test"), sha256 (of the pixels), pixels (binary:
                         uint8, height x width x channels, row-major)
    quarantine.parquet   id, label_name, reason, detail, image (the original bytes, kept for inspection)
    report.json          counts per reason, per class and split, image sizes and modes (``CleanInfo``)
    report.md            the same for a person

The rules: a record's split comes from a hash of its pixels alone (``assign_split``), so adding data
never moves an old record and an image never sits in two splits; records with the same pixels are
``duplicate`` (one label: the first is kept) or ``label_conflict`` (several labels: every copy goes,
``content_conflicts``); and nothing is dropped silently: ``records_in == kept + quarantined``.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from imgflow.config import CleanConfig
from imgflow.errors import SourceError
from imgflow.fingerprint import sha256_bytes, stable_hash
from imgflow.results import CleanInfo
from imgflow.store import write_json_atomic

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
) -> CleanInfo:
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
    return CleanInfo.model_validate(report)


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


