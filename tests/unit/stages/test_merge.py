"""merge: cleaned partitions into one clean table."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgflow.config import CleanConfig
from imgflow.runtime.errors import ConfigError
from imgflow.results import StageResult
from imgflow.stages.clean import CLEAN
from imgflow.stages.download import SCHEMA
from imgflow.stages.merge import MERGE
from imgflow.store.artifacts import ArtifactStore
from tests.conftest import digit_like, encode


def _cleaned(store: ArtifactStore, name: str, rows: list[tuple[str, bytes, str]], config: CleanConfig) -> StageResult:
    folder = store.folder / "raw" / name
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"id": [r[0] for r in rows], "image": [r[1] for r in rows], "label": [r[2] for r in rows]},
                            schema=SCHEMA), folder / "records.parquet")
    raw = StageResult(
        stage="download", key=name, path=str(folder), fingerprint=name, status="ran",
        info={"records": len(rows), "source": f"test:{name}"},
    )
    return CLEAN.run(store, config, {"raw": raw})


def test_merge_unions_partitions_with_one_class_list_and_dedupes_across_them(store: ArtifactStore) -> None:
    config = CleanConfig(image_size=(16, 16), channels=1)
    day1 = _cleaned(store, "d1", [(f"d1/{i}", encode(digit_like(i)), "ab"[i % 2]) for i in range(8)] + [("d1/bad", b"", "a")], config)
    day2 = _cleaned(store, "d2", [
        *[(f"d2/{i}", encode(digit_like(100 + i)), "bc"[i % 2]) for i in range(6)],
        ("d2/dup", encode(digit_like(0)), "a"),  # same image and label as d1/0: a duplicate
        ("d2/conflict", encode(digit_like(1)), "c"),  # d1/1 is "b": a label conflict, both quarantined
    ], config)
    merged = MERGE.run(store, config, {"part:d1": day1, "part:d2": day2})
    info = merged.info
    assert info.class_names == ["a", "b", "c"]
    assert info.records_in == 9 + 8 == info.kept + info.quarantined
    assert info.quarantine_reasons == {"empty": 1, "duplicate": 1, "label_conflict": 2}
    kept = pq.read_table(merged.file("records.parquet")).to_pylist()
    assert all(info.class_names[r["label"]] == r["label_name"] for r in kept)
    splits_before = {r["id"]: r["split"] for p in (day1, day2) for r in pq.read_table(p.file("records.parquet")).to_pylist()}
    assert all(splits_before[r["id"]] == r["split"] for r in kept)
    assert sum(info.source_images.size_counts.values()) == 16
    assert info.source == "test:d1 .. test:d2 (2 partitions)"


def test_merge_refuses_partitions_of_different_shapes(store: ArtifactStore) -> None:
    small = _cleaned(store, "s", [(f"s/{i}", encode(digit_like(i, size=8)), "ab"[i % 2]) for i in range(4)], CleanConfig())
    large = _cleaned(store, "l", [(f"l/{i}", encode(digit_like(i, size=12)), "ab"[i % 2]) for i in range(4)], CleanConfig())
    with pytest.raises(ConfigError, match=r"different image shapes \(8x8x1, 12x12x1\): set \[clean\] image_size and channels"):
        MERGE.run(store, CleanConfig(), {"part:s": small, "part:l": large})
