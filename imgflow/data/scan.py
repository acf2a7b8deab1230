"""A raw table's records checked one by one, a chunk at a time in a worker process (``scan_chunk``), and
what the clean stage keeps of all of them (``Scan``): compact keys, never the images.

Each record's label (corrected where ``[clean] labels`` names its id), its image header read, and once
the target shape is known its pixels decoded, converted and resized, with their content hash; what is
wrong with it is a quarantine reason. The decoded pixels go to a chunk file in scratch
(``imgflow.stages.clean`` writes them out in order).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from imgflow.data.images import BadImage, Header, decode, read_header
from imgflow.data.recordkeys import Coded, RecordKeys
from imgflow.data.tables import open_parquet, write_scratch
from imgflow.data.text import BadText, normalize

UNLABELED = ("unlabeled", "no label: the record has no class (e.g. a file outside any class folder)")
DECODED = pa.schema([("position", pa.int64()), ("pixels", pa.binary())])
# With text: the cleaned text, and the pixels' own hash (the split's; the record's sha256 covers the text too).
DECODED_TEXT = DECODED.append(pa.field("text", pa.string())).append(pa.field("pixels_sha256", pa.binary(32)))


@dataclass
class ChunkScan:
    """What a worker found in one chunk, in table order: its records' ids, labels, headers ("HxW
    MODE"; None: unreadable), the sha256 digests of the decoded pixels (32 bytes a record, zeros where
    not decoded) and the quarantine reasons by offset in the chunk."""

    ids: pa.Array
    labels: list[str]
    headers: list[str | None]
    digests: np.ndarray  # (records, 32) uint8
    decoded: np.ndarray  # bool: has a digest
    reasons: dict[int, tuple[str, str]]


class Scan:
    """What the workers found, one entry per record in table order: compact keys only (``RecordKeys``
    and a code for each record's header: about 50 bytes a record and its id's characters), whatever
    the size of the images."""

    def __init__(self, records: int = 0) -> None:
        self.keys = RecordKeys(records)
        self.headers = Coded(records)
        self.reasons: dict[int, tuple[str, str]] = {}  # position -> (reason, detail)

    def __len__(self) -> int:
        return len(self.keys)

    def extend(self, found: ChunkScan) -> None:
        start = len(self.keys)
        self.reasons.update((start + offset, reason) for offset, reason in found.reasons.items())
        self.keys.extend(found.ids, found.labels, found.digests, found.decoded)
        self.headers.extend(found.headers)

    def header_counts(self) -> dict[Header, int]:
        """The headers read (size and mode), with how many records had each, in order of first
        appearance; records with an unreadable header are not counted."""
        return {Header.from_text(header): count for header, count in self.headers.counts().items()}


def scan_chunk(
    raw_path: str,
    groups: list[int],
    target: tuple[tuple[int, int], int] | None,
    class_names: Sequence[str] | None,
    decoded_path: str | None,
    first_position: int,
    max_pixels: int,
    with_text: bool = False,
    relabel: Mapping[str, str] | None = None,
) -> ChunkScan:
    """Read the header of every record of ``groups``, its label corrected where ``relabel`` names its id; with a
    ``target`` shape also decode the usable ones, writing their pixels (and cleaned text) to
    ``decoded_path`` (``DECODED``). Runs in a worker process."""
    table = open_parquet(raw_path).read_row_groups(groups, columns=["id", "image", "label"] + (["text"] if with_text else []))
    raw_texts = table.column("text").to_pylist() if with_text else None
    allowed = set(class_names) if class_names is not None else None
    labels = [label or "" for label in table.column("label").to_pylist()]
    if relabel:
        labels = [relabel.get(record, label) for record, label in zip(table.column("id").to_pylist(), labels, strict=True)]
    headers: list[str | None] = [None] * len(labels)
    digests = np.zeros((len(labels), 32), np.uint8)
    reasons: dict[int, tuple[str, str]] = {}
    positions: list[int] = []
    pixels: list[bytes] = []
    texts: list[str] = []
    pixel_digests: list[bytes] = []
    for offset, (data, label) in enumerate(zip(table.column("image").to_pylist(), labels, strict=True)):
        if not label:
            reasons[offset] = UNLABELED
            continue
        try:
            headers[offset] = read_header(data, max_pixels).text()
        except BadImage as bad:
            reasons[offset] = (bad.reason, bad.detail)
            continue
        if target is None:
            continue
        if allowed is not None and label not in allowed:
            reasons[offset] = ("unknown_label", f"label {label!r} is not one of the spec's class_names")
            continue
        try:
            decoded = decode(data, target[0], target[1], max_pixels).tobytes()
            text = normalize(raw_texts[offset]) if raw_texts is not None else None
        except (BadImage, BadText) as bad:
            reasons[offset] = (bad.reason, bad.detail)
            continue
        content = hashlib.sha256(decoded)
        if text is not None:
            pixel_digests.append(content.digest())
            texts.append(text)
            content.update(b"\0" + text.encode())
        digests[offset] = np.frombuffer(content.digest(), np.uint8)
        positions.append(first_position + offset)
        pixels.append(decoded)
    if decoded_path is not None:
        columns = {"position": positions, "pixels": pixels} | ({"text": texts, "pixels_sha256": pixel_digests} if with_text else {})
        write_scratch(pa.table(columns, schema=DECODED_TEXT if with_text else DECODED), decoded_path)
    decoded_mask = np.zeros(len(labels), np.bool_)
    decoded_mask[np.asarray(positions, np.int64) - first_position] = True
    return ChunkScan(table.column("id").combine_chunks(), labels, headers, digests, decoded_mask, reasons)
