from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest

from imgflow.data import sources
from imgflow.config import DownloadConfig
from imgflow.runtime.errors import SourceError
from imgflow.data.sources import RawRecord
from imgflow.data.sources import source_fingerprint
from imgflow.stages.download import DOWNLOAD
from imgflow.store.artifacts import ArtifactStore


class ListSource:
    """A source over records the test makes itself."""

    def __init__(self, records: list[RawRecord]) -> None:
        self.spec = "list:test"
        self.has_text = False
        self._records = records

    def fingerprint(self) -> str:
        return str(len(self._records))

    def records(self) -> Iterator[RawRecord]:
        return iter(self._records)


def test_download_writes_every_record(store: ArtifactStore) -> None:
    config = DownloadConfig(source="sample:digits")
    result = DOWNLOAD.run(store, config, {"source": source_fingerprint(config.source)})
    table = pq.read_table(result.file("records.parquet"))
    assert table.num_rows == result.info.records == 1797
    assert table.column_names == ["id", "image", "label"]


def test_download_limit(store: ArtifactStore) -> None:
    config = DownloadConfig(source="sample:mnist5k", limit=300)
    result = DOWNLOAD.run(store, config, {"source": source_fingerprint(config.source)})
    labels = pq.read_table(result.file("records.parquet")).column("label").to_pylist()
    assert len(labels) == 300 and len(set(labels)) == 10


def test_empty_source_fails_and_leaves_nothing(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sources.SCHEMES, "list", lambda rest, options: ListSource([]))
    with pytest.raises(SourceError, match="list:empty holds no records"):
        DOWNLOAD.run(store, DownloadConfig(source="list:empty"), {"source": "x"})
    assert [p.name for p in (store.folder / "download").iterdir() if not p.name.startswith(".lock-")] == []
