"""The clean-table contract: stable splits, duplicates and label conflicts, the accounting."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgflow.data.cleantable import (
    KEPT_SCHEMA,
    QUARANTINE_SCHEMA,
    CleanTableWriter,
    assign_split,
    data_fingerprint,
    natural_key,
)
from imgflow.config import CleanConfig
from imgflow.runtime.errors import SourceError


def test_natural_sort_of_labels() -> None:
    assert sorted(["10", "2", "cat", "1"], key=natural_key) == ["1", "2", "10", "cat"]


def test_split_depends_on_the_content_and_the_salt_alone() -> None:
    shas = [f"{i:064x}" for i in range(2000)]
    splits = [assign_split(sha, 0.2, 0.1) for sha in shas]
    assert splits == [assign_split(sha, 0.2, 0.1) for sha in shas]
    assert 300 <= splits.count("test") <= 500 and 130 <= splits.count("val") <= 270
    assert splits != [assign_split(sha, 0.2, 0.1, salt="other") for sha in shas]
    assert {assign_split(sha, 0.0, 0.0) for sha in shas} == {"train"}


def _kept(names: list[str]) -> pa.Table:
    rows = len(names)
    return pa.table({"id": [str(i) for i in range(rows)], "label": [0] * rows, "label_name": names, "split": ["train"] * rows,
                     "sha256": [hashlib.sha256(bytes([i])).hexdigest() for i in range(rows)], "pixels": [b"\0"] * rows}, schema=KEPT_SCHEMA)


def _write(folder, records_in: int, names: list[str]):
    folder.mkdir()
    with CleanTableWriter(folder, CleanConfig(), ["a", "b"], 1) as writer:
        for name in names:  # one batch per record: the writer streams
            writer.write_kept(_kept([name]))
        writer.write_quarantined(QUARANTINE_SCHEMA.empty_table())
        return writer.finish(source="test:x", records_in=records_in, image_shape=[1, 1, 1], modes={"L": 2},
                             size_counts={"1x1": 1, "1x3": 1})


@pytest.mark.parametrize("count", [0, 1, 2, 4096, 9000])
def test_the_data_fingerprint_from_packed_digests_is_the_stable_hash_of_the_sorted_hex_list(count: int) -> None:
    from imgflow.store.fingerprint import stable_hash

    hexes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(count)]
    assert data_fingerprint(bytes.fromhex("".join(hexes))) == stable_hash(sorted(hexes))


def test_the_accounting_must_add_up_and_two_classes_must_be_left(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="clean lost records: 3 in, 2 kept, 0 quarantined"):
        _write(tmp_path / "lost", 3, ["a", "b"])
    with pytest.raises(SourceError, match=r"fewer than two classes with usable images \(classes kept: \['a'\]\)"):
        _write(tmp_path / "one", 2, ["a", "a"])
    info = _write(tmp_path / "good", 2, ["a", "b"])
    assert (info.kept, info.quarantined, info.per_class) == (2, 0, {"a": {"train": 1, "val": 0, "test": 0}, "b": {"train": 1, "val": 0, "test": 0}})
    assert info.source_images.width.median == 2.0 and info.source_images.height.median == 1
    assert pq.read_table(tmp_path / "good" / "records.parquet").num_rows == 2
    assert "| a | 1 | 0 | 0 |" in (tmp_path / "good" / "report.md").read_text()
