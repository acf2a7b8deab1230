"""The streaming, parallel clean gives the answers the first, in-memory version gave, and the same
bytes on one core as on several."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgflow.config import CleanConfig, DownloadConfig, ShardConfig
from imgflow.data.sources import source_fingerprint
from imgflow.results import DownloadInfo, StageResult
from imgflow.data import assembly
from imgflow.stages.clean import CLEAN
from imgflow.stages.download import DOWNLOAD, SCHEMA
from imgflow.stages.shard import SHARD
from imgflow.store.stage import Stage
from imgflow.store.artifacts import ArtifactStore
from imgflow.store.fingerprint import sha256_file, stable_hash
from imgflow.store.objectstore import ObjectRoot
from imgflow.store.roots import open_store
from tests.conftest import digit_like, encode

# Digests of (id, label, split, sha256) of every kept record and (id, reason) of every quarantined
# one, as the in-memory clean of commit 5eccbf6 wrote them.
GOLDEN = {
    "mnist5k": ("7c3d751a3e3673762c91233e1d3e21ec7f4933e910b835feed66048ad2f251a4",
                "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945", 5000, 0),
    "dirty": ("0886ff4bf911585b4b2fff50a39715417b63e3a32f7d18015f0e226026746d16",
              "b254ca9ccd6220b07781b6ff76ef0d189490e48645e49292a4e9772854644978", 1999, 63),
    "dirty28": ("b1012c8c9b16515025249fa18003c11b8ed7e3eac59390feea0bb42b811641ab",
                "b254ca9ccd6220b07781b6ff76ef0d189490e48645e49292a4e9772854644978", 1999, 63),
}


def _digests(result: StageResult) -> tuple[str, str, int, int]:
    kept = pq.read_table(result.file("records.parquet"), columns=["id", "label_name", "split", "sha256"]).to_pylist()
    bad = pq.read_table(result.file("quarantine.parquet"), columns=["id", "reason"]).to_pylist()
    return (stable_hash(sorted((r["id"], r["label_name"], r["split"], r["sha256"]) for r in kept)),
            stable_hash(sorted((r["id"], r["reason"]) for r in bad)), len(kept), len(bad))


def _clean(store: ArtifactStore, spec: str, config: CleanConfig) -> StageResult:
    raw = DOWNLOAD.run(store, DownloadConfig(source=spec), {"source": source_fingerprint(spec)})
    return CLEAN.run(store, config, {"raw": raw})


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of one 1,024-record row group, on two worker processes: the parallel path on small data."""
    monkeypatch.setattr(assembly, "CHUNK_ROWS", 1024)
    monkeypatch.setenv("IMGFLOW_WORKERS", "2")


def test_the_bundled_sample_cleans_as_it_always_did(store: ArtifactStore, small_chunks: None) -> None:
    assert _digests(_clean(store, "sample:mnist5k", CleanConfig())) == GOLDEN["mnist5k"]


@pytest.mark.slow
def test_the_dirty_folder_cleans_as_it_always_did(store: ArtifactStore, tmp_path: Path, small_chunks: None) -> None:
    from imgflow.data.synthetic import dirty_folder

    corpus = dirty_folder(tmp_path / "dirty", count=2000)
    assert _digests(_clean(store, f"folder:{corpus.root}", CleanConfig())) == GOLDEN["dirty"]
    assert _digests(_clean(store, f"folder:{corpus.root}", CleanConfig(image_size=(28, 28), channels=1))) == GOLDEN["dirty28"]


def _raw(folder: Path) -> StageResult:
    """A raw table in row groups of 40 records with bad files, duplicates and a conflict spread across them."""
    rows = [(f"r{i:03d}", encode(digit_like(i % 150)), str(i % 3 if i < 150 else (i + 1) % 3 if i % 7 == 0 else i % 3))
            for i in range(300)]
    rows[13] = ("bad/empty", b"", "1")
    rows[77] = ("bad/text", b"not an image", "2")
    rows[201] = ("bad/unlabeled", encode(digit_like(999)), "")
    folder.mkdir(parents=True)
    table = pa.table({name: [r[i] for r in rows] for i, name in enumerate(("id", "image", "label"))}, schema=SCHEMA)
    pq.write_table(table, folder / "records.parquet", row_group_size=40)
    return StageResult(stage="download", key="k", path=str(folder), fingerprint="raw", status="ran",
                       info={"records": len(rows), "source": "test:spread"})


def test_one_core_and_several_write_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _raw(tmp_path / "raw")
    monkeypatch.setattr(assembly, "CHUNK_ROWS", 40)
    outputs = {}
    for workers in ("1", "2"):
        monkeypatch.setenv("IMGFLOW_WORKERS", workers)
        store = ArtifactStore(tmp_path / f"w{workers}")
        cleaned = CLEAN.run(store, CleanConfig(), {"raw": raw})
        shards = SHARD.run(store, ShardConfig(records_per_shard=70), {"clean": cleaned})
        outputs[workers] = {
            name: sha256_file(Path(result.path) / name)
            for result in (cleaned, shards)
            for name in sorted(p.name for p in Path(result.path).iterdir() if p.name != "manifest.json")
        }
        assert cleaned.info.records_in == 300 == cleaned.info.kept + cleaned.info.quarantined
        assert {"duplicate", "label_conflict", "empty", "not_an_image", "unlabeled"} <= set(cleaned.info.quarantine_reasons)
        ranges = -(-cleaned.info.kept // 70)  # one shard per split for each range of 70 rows
        assert ranges > 1 and all(len(shards.info.splits[s].files) == ranges for s in ("train", "val", "test"))
    assert outputs["1"] == outputs["2"] and len(outputs["1"]) == 5 + 3 * ranges  # the clean table, its reports and profile; the shards


@pytest.mark.slow
def test_a_dask_cluster_on_an_s3_root_writes_what_one_process_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_root: str
) -> None:
    """Clean's chunks and shard's ranges run on the Dask workers (separate processes), which read
    their input from the s3:// root and write their output there; the outputs are byte for byte a
    single process's."""
    from distributed import Client, LocalCluster, get_task_stream

    local = _raw(tmp_path / "raw")
    monkeypatch.setattr(assembly, "CHUNK_ROWS", 40)
    monkeypatch.setenv("IMGFLOW_WORKERS", "1")
    alone = CLEAN.run(ArtifactStore(tmp_path / "alone"), CleanConfig(), {"raw": local})
    alone_shards = SHARD.run(ArtifactStore(tmp_path / "alone"), ShardConfig(records_per_shard=70), {"clean": alone})

    shared = open_store(s3_root, mirror=tmp_path / "mirror")

    def upload(out_dir: Path, config: dict, inputs: dict) -> DownloadInfo:
        shutil.copy(local.file("records.parquet"), out_dir)
        return local.info

    raw = Stage("download", "test", upload).run(shared, {}, {"source": "spread"})
    assert raw.uri is not None
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
          Client(cluster) as client):
        monkeypatch.setenv("IMGFLOW_TASK_RUNNER", f"dask:{cluster.scheduler_address}")
        with get_task_stream(client) as stream:
            cleaned = CLEAN.run(shared, CleanConfig(), {"raw": raw})
            shards = SHARD.run(shared, ShardConfig(records_per_shard=70), {"clean": cleaned})
    scans = [task for task in stream.data if task["key"].startswith("scan_chunk")]
    assert len(scans) == 2 * 8, "two passes (probe, then decode) over 8 chunks, all on the cluster"
    assert len({task["worker"] for task in scans}) == 2
    ranges = [task for task in stream.data if task["key"].startswith("write_shards")]
    assert len(ranges) == len(shards.info.splits["train"].files) > 1
    for one, spread in ((alone, cleaned), (alone_shards, shards)):
        spread = open_store(s3_root, mirror=tmp_path / "fresh-mirror").localize(spread)  # as published
        files = sorted(p.name for p in Path(one.path).iterdir() if p.name != "manifest.json")
        assert files == sorted(p.name for p in Path(spread.path).iterdir() if p.name != "manifest.json")
        assert {n: sha256_file(Path(one.path) / n) for n in files} == {n: sha256_file(Path(spread.path) / n) for n in files}
        assert not ObjectRoot(s3_root).files(f"{one.stage}/.work-{spread.key}"), "the shared scratch goes once the output is in"
