"""The clean-table contract: the layout both ``clean`` and ``merge`` write, and the rules they share.

Folder layout::

    records.parquet      kept records: id, label (int index into class_names), label_name,
                         split ("train" | "val" | "test"), sha256 (of the content: the pixels, and the
                         text when there is text), pixels (binary: uint8, height x width x channels,
                         row-major), and, when the source carries text, text (string, normalized;
                         "" for none)
    quarantine.parquet   id, label_name, reason, detail, image (the original bytes, kept for inspection)
    report.json          counts per reason, per class and split, image sizes and modes (``CleanInfo``)
    report.md            the same for a person
    profile.json         histograms of brightness, contrast, channel means, sizes, labels and caption
                         lengths (``imgflow.data.profile``): the reference drift checks compare with

The rules: a record's split comes from a hash of its pixels alone (``assign_split``), so adding data
(or changing a caption) never moves an old record and an image never sits in two splits; records with the same content are
``duplicate`` (one label: the first is kept) or ``label_conflict`` (several labels: every copy goes,
``imgflow.data.recordkeys.content_conflicts``); and nothing is dropped silently: ``records_in == kept + quarantined``.
"""

from __future__ import annotations

import binascii
import hashlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgflow.config import CleanConfig
from imgflow.data.profile import Profile
from imgflow.data.text import tokens
from imgflow.results import CleanInfo
from imgflow.runtime.errors import ConfigError, SourceError
from imgflow.store.files import write_json_atomic
from imgflow.store.fingerprint import sha256_bytes

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
TEXT_KEPT_SCHEMA = KEPT_SCHEMA.append(pa.field("text", pa.string()))
TOP_TOKENS = 10  # per class, in the report
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


def check_splits(info: CleanInfo, min_test_records: int) -> None:
    """A ``ConfigError`` when a clean table's splits cannot train and judge a model: an empty train
    split, or a test split under ``min_test_records`` (``[gate] min_test_records``). Checked right after
    cleaning, before any training: the message names the split, the counts and the fractions to change."""
    splits = {name: info.splits.get(name, 0) for name in SPLITS}
    rule = info.split_rule
    counts = f"{info.kept} records kept: train {splits['train']}, val {splits['val']}, test {splits['test']}"
    fractions = f"[clean] test_fraction = {rule['test_fraction']}, val_fraction = {rule['val_fraction']}"
    if splits["test"] < min_test_records:
        raise ConfigError(
            f"the test split of {info.source} would hold {splits['test']} record(s), fewer than the {min_test_records} "
            f"a model is judged on ([gate] min_test_records) ({counts}; {fractions}). Each record's split comes from "
            "a hash of its pixels, so a small table can miss a split: raise test_fraction, add records, or lower "
            "min_test_records."
        )
    if splits["train"] == 0:
        raise ConfigError(
            f"the train split of {info.source} would be empty ({counts}; {fractions}): lower test_fraction or val_fraction, or add records."
        )


def natural_key(label: str) -> tuple[int, int | str]:
    """Sort "2" before "10", and numbers before words."""
    return (0, int(label)) if label.isdigit() else (1, label)


def _stats(counts: Mapping[int, int]) -> dict[str, Any]:
    """min/median/max of values given as ``{value: how many}`` (the median as ``statistics.median``)."""
    values = sorted(v for v, n in counts.items() if n)
    total = sum(counts.values())

    def nth(index: int) -> int:  # the index-th smallest value, counting repeats
        for value in values:
            index -= counts[value]
            if index < 0:
                return value
        raise IndexError(index)

    median = nth(total // 2) if total % 2 else (nth(total // 2 - 1) + nth(total // 2)) / 2
    return {"min": values[0], "median": median, "max": values[-1]}


def _size_stats(size_counts: Mapping[str, int]) -> dict[str, Any]:
    """min/median/max height and width from ``{"HxW": count}``, which partitions can sum."""
    heights: Counter[int] = Counter()
    widths: Counter[int] = Counter()
    for key, count in size_counts.items():
        height, width = (int(n) for n in key.split("x"))
        heights[height] += count
        widths[width] += count
    if not sum(heights.values()):
        return {}
    return {"height": _stats(heights), "width": _stats(widths)}


def pixel_array(column: pa.Array | pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    """A ``pixels`` column as one uint8 array of ``shape`` per record (``(-1, channels)``: each image's
    pixels a row), a view of the column's buffer when it is one chunk: no record is copied."""
    pixels = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = np.frombuffer(pixels.buffers()[1], np.int32)[pixels.offset : pixels.offset + len(pixels) + 1]
    data = np.frombuffer(pixels.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    return data.reshape(len(pixels), *shape)


def data_fingerprint(digests: bytes | bytearray) -> str:
    """``stable_hash`` of the sorted list of the kept records' hex content hashes, computed from their
    packed 32-byte digests a block at a time: the same value, without a list of N strings (120 bytes
    each, where a digest takes 32). Sorting the digests sorts their hex forms alike."""
    ordered = np.sort(np.frombuffer(digests, dtype="V32"))
    hasher = hashlib.sha256(b"[")
    for start in range(0, len(ordered), 4096):
        hexed = binascii.hexlify(ordered[start : start + 4096].tobytes())
        items = b'","'.join(hexed[i : i + 64] for i in range(0, len(hexed), 64))
        hasher.update((b',"' if start else b'"') + items + b'"')
    hasher.update(b"]")
    return hasher.hexdigest()


class CleanTableWriter:
    """Writes a clean table (the layout above) batch by batch, in the order given, and keeps only what
    the report needs: counts, and the content hash of each kept record (for the data fingerprint).

    ``finish`` checks the accounting (``records_in == kept + quarantined``) and that two classes are
    left, then writes the report. Used as a context manager, it closes its files whatever happens (the
    stage writes into a temporary folder, so a failed build leaves nothing behind).
    """

    def __init__(self, out_dir: Path, config: CleanConfig, class_names: list[str], channels: int, with_text: bool = False) -> None:
        self.out_dir = out_dir
        self.channels = channels
        self.profile = Profile()
        self.schema = TEXT_KEPT_SCHEMA if with_text else KEPT_SCHEMA
        self.text = _TextCounts(class_names) if with_text else None
        self.config = config
        self.class_names = class_names
        self.per_class = {name: dict.fromkeys(SPLITS, 0) for name in class_names}
        self.splits: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.digests = bytearray()  # the sha256 of each kept record, 32 bytes each: for the data fingerprint
        self.kept = self.quarantined = 0
        self.sample: list[dict[str, str]] = []  # the first quarantined records, for the report
        # Pixels are written as they are: compressing them cost more time than any other part of
        # writing the table, for little (photos barely compress), and so did their min/max statistics
        # (two thirds of the writing time, and no reader filters on pixels); unique columns get no
        # dictionary.
        self._kept = pq.ParquetWriter(
            out_dir / "records.parquet",
            self.schema,
            compression={name: "none" if name == "pixels" else "snappy" for name in self.schema.names},
            use_dictionary=["label", "label_name", "split"],
            write_statistics=[name for name in self.schema.names if name not in ("pixels", "text")],
        )
        self._quarantine = pq.ParquetWriter(out_dir / "quarantine.parquet", QUARANTINE_SCHEMA)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._kept.close()
        self._quarantine.close()

    def write_kept(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        table = table.select(self.schema.names).cast(self.schema)
        self._kept.write_table(table)
        self.profile.add_pixels(pixel_array(table.column("pixels"), (-1, self.channels)))
        names = table.column("label_name").to_pylist()
        for name, split in zip(names, table.column("split").to_pylist(), strict=True):
            self.per_class[name][split] += 1
            self.splits[split] += 1
        if self.text is not None:
            self.text.add(names, table.column("text").to_pylist())
        self.digests += bytes.fromhex("".join(table.column("sha256").to_pylist()))
        self.kept += table.num_rows

    def write_quarantined(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self._quarantine.write_table(table.cast(QUARANTINE_SCHEMA))
        self.reasons.update(table.column("reason").to_pylist())
        if len(self.sample) < 20:
            self.sample += table.slice(0, 20 - len(self.sample)).select(["id", "label_name", "reason", "detail"]).to_pylist()
        self.quarantined += table.num_rows

    def finish(
        self,
        *,
        source: str,
        records_in: int,
        image_shape: list[int],
        modes: Mapping[str, int],
        size_counts: Mapping[str, int],
        relabeled: int = 0,
    ) -> CleanInfo:
        """The report (written as report.json and report.md), once every record was written."""
        if self.kept + self.quarantined != records_in:
            raise RuntimeError(f"clean lost records: {records_in} in, {self.kept} kept, {self.quarantined} quarantined")
        present = sorted(name for name, counts in self.per_class.items() if sum(counts.values()))
        if len(present) < 2:
            raise SourceError(f"dataset source {source} has fewer than two classes with usable images (classes kept: {present or 'none'})")
        report = {
            "source": source,
            "records_in": records_in,
            "kept": self.kept,
            "quarantined": self.quarantined,
            "quarantine_reasons": dict(self.reasons.most_common()),
            "image_shape": image_shape,
            "class_names": self.class_names,
            "splits": dict(self.splits),
            "per_class": self.per_class,
            "source_images": {
                "modes": dict(Counter(modes).most_common()),
                "size_counts": dict(Counter(size_counts).most_common()),
                **_size_stats(size_counts),
            },
            "split_rule": {
                "test_fraction": self.config.test_fraction,
                "val_fraction": self.config.val_fraction,
                "salt": self.config.split_salt,
                "hash": "sha256 of the pixels",
            },
            "data_fingerprint": data_fingerprint(self.digests),
            "text": self.text.report() if self.text is not None else None,
            "relabeled": relabeled,
        }
        self.profile.add_labels({name: sum(counts.values()) for name, counts in self.per_class.items()})
        self.profile.add_sizes(size_counts)
        if self.text is not None:
            self.profile.add_caption_lengths(self.text.lengths())
        self.profile.write(self.out_dir)
        write_json_atomic(self.out_dir / "report.json", report)
        (self.out_dir / "report.md").write_text(report_markdown(report, self.sample))
        return CleanInfo.model_validate(report)


class _TextCounts:
    """What the report says of the text, counted as records are written: per-length counts (compact:
    one entry per distinct length) and each class's token counts (bounded by the vocabulary)."""

    def __init__(self, class_names: list[str]) -> None:
        self.empty = 0
        self.characters: Counter[int] = Counter()
        self.token_counts: Counter[int] = Counter()
        self.per_class: dict[str, Counter[str]] = {name: Counter() for name in class_names}

    def add(self, labels: list[str], texts: list[str]) -> None:
        for label, text in zip(labels, texts, strict=True):
            if not text:
                self.empty += 1
                continue
            found = tokens(text)
            self.characters[len(text)] += 1
            self.token_counts[len(found)] += 1
            self.per_class[label].update(found)

    def lengths(self) -> dict[int, int]:
        """Records by the number of tokens of their text (an empty text has none)."""
        return dict(Counter({0: self.empty}) + self.token_counts)

    def report(self) -> dict[str, Any]:
        return {
            "empty": self.empty,
            "characters": _stats(self.characters) if self.characters else None,
            "tokens": _stats(self.token_counts) if self.token_counts else None,
            # Ties in alphabetical order: the same data gives the same report in any record order.
            "top_tokens": {
                name: sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_TOKENS] for name, counts in self.per_class.items()
            },
        }


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
        *(
            ["| reason | records |", "|---|---|", *[f"| {reason} | {count} |" for reason, count in report["quarantine_reasons"].items()]]
            if report["quarantine_reasons"]
            else ["None: every record was kept."]
        ),
        "",
        "## Classes",
        "",
        "| class | train | val | test |",
        "|---|---|---|---|",
        *[f"| {name} | {counts['train']} | {counts['val']} | {counts['test']} |" for name, counts in report["per_class"].items()],
        "",
        "## Source images",
        "",
        "- modes: " + ", ".join(f"{mode} {count}" for mode, count in report["source_images"]["modes"].items()),
        "- height min/median/max: {min}/{median}/{max}".format(**report["source_images"]["height"]),
        "- width min/median/max: {min}/{median}/{max}".format(**report["source_images"]["width"]),
    ]
    if report.get("text") is not None:
        lines += _text_markdown(report["text"], report["kept"])
    if quarantined:
        lines += ["", f"## Quarantined records (first {len(quarantined)})", "", "| id | label | reason | detail |", "|---|---|---|---|"]
        lines += [f"| {r['id']} | {r['label_name']} | {r['reason']} | {r['detail'][:120]} |" for r in quarantined]
    return "\n".join(lines) + "\n"


def _text_markdown(text: Mapping[str, Any], kept: int) -> list[str]:
    lines = ["", "## Text", "", f"- records without text: {text['empty']} of {kept}"]
    for what in ("characters", "tokens"):
        if text[what] is not None:
            lines.append(f"- {what} per text, min/median/max: {text[what]['min']}/{text[what]['median']}/{text[what]['max']}")
    lines += ["", "| class | most frequent tokens |", "|---|---|"]
    lines += [f"| {name} | {', '.join(f'{token} ({count})' for token, count in top)} |" for name, top in text["top_tokens"].items()]
    return lines
