import json
from pathlib import Path

from imgflow.pipeline import housekeeping
from imgflow.registry import versions as registry
from imgflow.store.stage import Stage
from imgflow.store.artifacts import RUNS, ArtifactStore
from imgflow.store.files import file_lock
from imgflow.store.roots import open_store

# Stand-in outputs of two real stages (the cache lists the pipeline's stages), with valid infos.
INFOS = {
    "download": {"records": 1, "source": "test:x"},
    "shard": {"image_shape": [1, 1, 1], "class_names": [], "data_fingerprint": "d", "splits": {}},
}


def _output(store: ArtifactStore, stage: str, tag: str) -> str:
    def build(out_dir: Path, config: dict, inputs: dict) -> dict:
        (out_dir / "data.bin").write_bytes(b"x" * 1000)
        return INFOS[stage]

    return Stage(stage, "1", build).run(store, {"tag": tag}, {}).key


def _run(store: ArtifactStore, keys: dict[str, str]) -> None:
    summary = {"model": "m", "decision": "promoted", "version": None, "stages": {s: {"key": k} for s, k in keys.items()}}
    housekeeping.record_run(store, summary)


def test_ls_says_who_uses_what_and_prune_keeps_lineage_and_recent_runs(store: ArtifactStore, tmp_path: Path) -> None:
    root = store.folder
    lineage = _output(store, "shard", "champion")
    old = _output(store, "shard", "old")
    recent = _output(store, "shard", "recent")
    unused = _output(store, "download", "unused")
    (root / "clean" / ".tmp-deadbeef-1234").mkdir(parents=True)  # left by a killed run
    (root / "train" / ".work-cafe").mkdir(parents=True)
    onnx = tmp_path / "model.onnx"
    onnx.write_text("onnx")
    card = {"model_fingerprint": "f", "metrics": {"accuracy": 1.0}, "lineage": {"shard": {"key": lineage}}}
    registry.register(root, "m", {"model.onnx": onnx}, card, {})
    _run(store, {"shard": old})
    _run(store, {"shard": recent})

    listed = {(e.stage, e.key): e for e in housekeeping.entries(store)}
    assert listed[("shard", lineage)].models == ["m/v1"]
    assert len(listed[("shard", recent)].runs) == 1 and listed[("shard", recent)].bytes >= 1000
    assert not listed[("clean", ".tmp-deadbeef-1234")].complete

    removed = housekeeping.prune(store, keep_runs=1)
    assert {(e.stage, e.key) for e in removed} == {
        ("shard", old), ("download", unused), ("clean", ".tmp-deadbeef-1234"), ("train", ".work-cafe")
    }
    assert store.lookup("shard", lineage) and store.lookup("shard", recent)
    assert store.lookup("shard", old) is None and not (root / "train" / ".work-cafe").exists()


def test_dry_run_removes_nothing(store: ArtifactStore) -> None:
    key = _output(store, "download", "a")
    assert [e.key for e in housekeeping.prune(store, keep_runs=0, dry_run=True)] == [key]
    assert store.lookup("download", key) is not None


def test_prune_leaves_what_a_live_build_holds(store: ArtifactStore) -> None:
    work = store.folder / "train" / ".work-abc"
    work.mkdir(parents=True)
    with file_lock(store.folder / "train" / ".lock-abc"):
        assert housekeeping.prune(store, keep_runs=0) == []
    assert work.exists()
    assert [e.key for e in housekeeping.prune(store, keep_runs=0)] == [".work-abc"]


def test_run_log_is_one_json_line_per_run(tmp_path: Path) -> None:
    _run(ArtifactStore(tmp_path), {"download": "k1"})
    _run(ArtifactStore(tmp_path), {"download": "k2"})
    lines = (tmp_path / RUNS).read_text().splitlines()
    assert [json.loads(line)["stages"]["download"] for line in lines] == [["k1"], ["k2"]]


def test_a_partitioned_run_keeps_every_partitions_outputs(store: ArtifactStore) -> None:
    days = [_output(store, "download", day) for day in ("d1", "d2")]
    summary = {"model": "m", "decision": "promoted", "version": None,
               "stages": {"download": {"status": "ran", "partitions": 2, "keys": days}}}
    housekeeping.record_run(store, summary)
    assert housekeeping.prune(store, keep_runs=1) == []
    assert [e.key for e in housekeeping.prune(store, keep_runs=0)] == sorted(days)


def test_on_an_s3_root_the_bucket_is_listed_and_pruned(s3_root: str, tmp_path: Path) -> None:
    """Outputs built on any machine, runs logged by any machine and models registered in the bucket
    decide, not this machine's mirror; a key whose lease object is there is left alone; a pruned
    output loses its manifest first and is gone from the mirror too."""
    from imgflow.store.objectstore import ObjectRoot

    here, there = open_store(s3_root), open_store(s3_root, mirror=tmp_path / "another-machine")
    lineage = _output(there, "shard", "champion")
    recent = _output(there, "shard", "recent")
    unused = _output(here, "download", "unused")
    leased = _output(there, "download", "leased")
    remote = ObjectRoot(s3_root)
    remote.write_bytes(f"download/.lease-{leased}", b"{}")  # a build of that key is going on
    remote.write_bytes("train/.work-cafe/epoch-0001.keras", b"checkpoint")  # a killed training's
    onnx = tmp_path / "model.onnx"
    onnx.write_text("onnx")
    with there.models("m") as root:
        registry.register(root, "m", {"model.onnx": onnx}, {"model_fingerprint": "f", "metrics": {}, "lineage": {"shard": {"key": lineage}}}, {})
    summary = {"model": "m", "decision": "promoted", "version": None, "stages": {"shard": {"key": recent}}}
    housekeeping.record_run(here, summary)  # logged from this machine
    assert remote.files("runs")[0].endswith(".json")

    listed = {(e.stage, e.key): e for e in housekeeping.entries(here)}
    assert set(listed) == {("shard", lineage), ("shard", recent), ("download", unused), ("download", leased), ("train", ".work-cafe")}
    assert listed[("shard", lineage)].models == ["m/v1"] and len(listed[("shard", recent)].runs) == 1
    assert str(listed[("shard", recent)].path).startswith("s3://") and listed[("shard", recent)].bytes >= 1000
    assert not listed[("train", ".work-cafe")].complete

    removed = housekeeping.prune(here, keep_runs=1)
    assert {(e.stage, e.key) for e in removed} == {("download", unused), ("train", ".work-cafe")}
    assert not remote.files(f"download/{unused}") and not (here.folder / "download" / unused).exists()
    assert not remote.files("train/.work-cafe")
    assert there.lookup("shard", lineage) and there.lookup("shard", recent) and there.lookup("download", leased)
