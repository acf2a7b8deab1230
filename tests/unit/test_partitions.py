"""Date partitions of a parquet: source."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgflow.runtime.errors import ConfigError, SourceError
from imgflow.data.partitions import date_partitions, select
from tests.conftest import digit_like, encode

D = dt.date.fromisoformat


def _lake(root: Path, days: dict[str, list[tuple[int, str]]]) -> Path:
    for day, rows in days.items():
        (root / f"date={day}").mkdir(parents=True)
        table = pa.table({"image": [encode(digit_like(seed)) for seed, _ in rows], "label": [label for _, label in rows]})
        pq.write_table(table, root / f"date={day}" / "part-0.parquet")
    return root


def test_partitions_are_listed_in_date_order_and_selected_by_range(tmp_path: Path) -> None:
    lake = _lake(tmp_path / "lake", {"2024-05-03": [(1, "a")], "2024-05-01": [(2, "a")], "2024-05-02": [(3, "b")]})
    (lake / "other").mkdir()
    assert [p.date for p in date_partitions(f"parquet:{lake}")] == [D("2024-05-01"), D("2024-05-02"), D("2024-05-03")]
    chosen = select(f"parquet:{lake}", D("2024-05-02"), D("2024-05-03"))
    assert [p.source for p in chosen] == [f"parquet:{lake}/date=2024-05-02", f"parquet:{lake}/date=2024-05-03"]
    assert [p.date for p in select(f"parquet:{lake}", None, D("2024-05-01"))] == [D("2024-05-01")]


def test_partition_selection_fails_clearly(tmp_path: Path) -> None:
    lake = _lake(tmp_path / "lake", {"2024-05-01": [(1, "a")]})
    with pytest.raises(SourceError, match=r"no partition from 2024-06-01 to 2024-06-02; its partitions run from 2024-05-01 to 2024-05-01"):
        select(f"parquet:{lake}", D("2024-06-01"), D("2024-06-02"))
    with pytest.raises(ConfigError, match="start 2024-05-02 is after end 2024-05-01"):
        select(f"parquet:{lake}", D("2024-05-02"), D("2024-05-01"))
    with pytest.raises(ConfigError, match="need a parquet: source"):
        select("folder:/x", None, None)
    with pytest.raises(SourceError, match="has no date=YYYY-MM-DD partition folders"):
        select(f"parquet:{tmp_path}", None, None)
