"""The clean-table contract: stable splits, duplicates and label conflicts, the accounting."""

from __future__ import annotations

import pyarrow as pa
import pytest

from imgflow.cleantable import KEPT_SCHEMA, QUARANTINE_SCHEMA, assign_split, content_conflicts, natural_key, write_clean_output
from imgflow.config import CleanConfig
from imgflow.errors import SourceError


def test_natural_sort_of_labels() -> None:
    assert sorted(["10", "2", "cat", "1"], key=natural_key) == ["1", "2", "10", "cat"]


def test_split_depends_on_the_content_and_the_salt_alone() -> None:
    shas = [f"{i:064x}" for i in range(2000)]
    splits = [assign_split(sha, 0.2, 0.1) for sha in shas]
    assert splits == [assign_split(sha, 0.2, 0.1) for sha in shas]
    assert 300 <= splits.count("test") <= 500 and 130 <= splits.count("val") <= 270
    assert splits != [assign_split(sha, 0.2, 0.1, salt="other") for sha in shas]
    assert {assign_split(sha, 0.0, 0.0) for sha in shas} == {"train"}


def test_content_conflicts_keep_the_first_duplicate_and_drop_every_conflicting_copy() -> None:
    ids = ["a", "b", "c", "d", "e", "f"]
    labels = ["x", "x", "x", "y", "x", "x"]
    shas = ["1", "1", "2", "2", None, "3"]
    found = content_conflicts(ids, labels, shas)
    assert {i: reason for i, (reason, _) in found.items()} == {"b": "duplicate", "c": "label_conflict", "d": "label_conflict"}
    assert found["b"][1] == "same image as a" and "c='x'" in found["c"][1] and "d='y'" in found["d"][1]


def _kept(names: list[str]) -> pa.Table:
    rows = len(names)
    return pa.table({"id": [str(i) for i in range(rows)], "label": [0] * rows, "label_name": names, "split": ["train"] * rows,
                     "sha256": [str(i) for i in range(rows)], "pixels": [b"\0"] * rows}, schema=KEPT_SCHEMA)


def test_the_accounting_must_add_up_and_two_classes_must_be_left(tmp_path) -> None:
    args = {"source": "test:x", "class_names": ["a", "b"], "image_shape": [1, 1, 1], "modes": {"L": 2}, "size_counts": {"1x1": 2}}
    empty = QUARANTINE_SCHEMA.empty_table()
    with pytest.raises(RuntimeError, match="clean lost records: 3 in, 2 kept, 0 quarantined"):
        write_clean_output(tmp_path, CleanConfig(), records_in=3, kept=_kept(["a", "b"]), quarantined=empty, **args)
    with pytest.raises(SourceError, match="fewer than two classes"):
        write_clean_output(tmp_path, CleanConfig(), records_in=2, kept=_kept(["a", "a"]), quarantined=empty, **args)
    info = write_clean_output(tmp_path, CleanConfig(), records_in=2, kept=_kept(["a", "b"]), quarantined=empty, **args)
    assert (info.kept, info.quarantined, info.per_class) == (2, 0, {"a": {"train": 1, "val": 0, "test": 0}, "b": {"train": 1, "val": 0, "test": 0}})
    assert (tmp_path / "records.parquet").is_file() and "| a | 1 | 0 | 0 |" in (tmp_path / "report.md").read_text()
