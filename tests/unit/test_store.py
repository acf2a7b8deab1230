import json
from pathlib import Path

import pytest

from imgflow.store.artifacts import MANIFEST, ArtifactStore, StageResult
from imgflow.store.stage import Stage


def _writer(text: str):
    def build(out_dir: Path, config: dict, inputs: dict) -> dict:
        (out_dir / "out.txt").write_text(text + str(config))
        return {"n": len(inputs)}

    return build


def test_build_writes_manifest_and_second_call_is_cached(store: ArtifactStore) -> None:
    stage = Stage("demo", "1", _writer("hello"))
    first = stage.run(store, {"x": 1}, {"source": "abc"})
    assert first.status == "ran"
    manifest = json.loads((Path(first.path) / MANIFEST).read_text())
    assert manifest["config"] == {"x": 1} and manifest["inputs"] == {"source": "abc"}
    assert set(manifest["files"]) == {"out.txt"}
    second = stage.run(store, {"x": 1}, {"source": "abc"})
    assert second.status == "cached"
    assert (second.key, second.path, second.fingerprint) == (first.key, first.path, first.fingerprint)


def test_key_changes_with_config_inputs_and_code_version() -> None:
    stage = Stage("demo", "1", _writer(""))
    base = stage.key({"x": 1}, {"source": "abc"})
    assert stage.key({"x": 2}, {"source": "abc"}) != base
    assert stage.key({"x": 1}, {"source": "abd"}) != base
    assert Stage("demo", "2", _writer("")).key({"x": 1}, {"source": "abc"}) != base
    upstream = StageResult(stage="up", key="k", path="/p", fingerprint="fp1", status="ran")
    assert stage.key({}, {"up": upstream}) == stage.key({}, {"up": "fp1"})


def test_failed_build_leaves_nothing_a_later_run_would_read(store: ArtifactStore) -> None:
    def broken(out_dir: Path, config: dict, inputs: dict) -> dict:
        (out_dir / "partial.txt").write_text("half")
        raise ValueError("boom")

    stage = Stage("demo", "1", broken)
    with pytest.raises(ValueError, match="boom"):
        stage.run(store, {}, {})
    assert store.lookup("demo", stage.key({}, {})) is None
    assert [p.name for p in (store.folder / "demo").iterdir()] == [f".lock-{stage.key({}, {})}"]


def test_output_without_manifest_is_not_complete(store: ArtifactStore) -> None:
    stage = Stage("demo", "1", _writer("fresh"))
    key = stage.key({}, {})
    debris = store.stage_dir("demo", key)
    debris.mkdir(parents=True)
    (debris / "out.txt").write_text("no manifest: not complete")
    assert store.lookup("demo", key) is None
    result = stage.run(store, {}, {})
    assert result.status == "ran"
    assert (Path(result.path) / "out.txt").read_text() == "fresh{}"


def test_stage_that_writes_nothing_fails(store: ArtifactStore) -> None:
    stage = Stage("demo", "1", lambda out_dir, config, inputs: {})
    with pytest.raises(RuntimeError, match="produced no output"):
        stage.run(store, {}, {})


def test_force_rebuilds_and_swaps_the_output_in(store: ArtifactStore) -> None:
    calls = []

    def build(out_dir: Path, config: dict, inputs: dict) -> dict:
        calls.append(1)
        (out_dir / "out.txt").write_text(f"build {len(calls)}")
        return {}

    stage = Stage("demo", "1", build)
    first = stage.run(store, {}, {})
    assert stage.run(store, {}, {}).status == "cached"
    forced = stage.run(store, {}, {}, force=True)
    assert forced.status == "ran" and forced.path == first.path and len(calls) == 2
    assert (Path(forced.path) / "out.txt").read_text() == "build 2"
    assert sorted(p.name for p in (store.folder / "demo").iterdir() if not p.name.startswith((".lock", ".verified-"))) == [first.key]


def test_concurrent_builders_of_one_key_build_once(store: ArtifactStore) -> None:
    import threading

    calls = []
    started = threading.Event()

    def slow(out_dir: Path, config: dict, inputs: dict) -> dict:
        calls.append(1)
        started.set()
        threading.Event().wait(0.5)
        (out_dir / "out.txt").write_text("once")
        return {}

    stage = Stage("demo", "1", slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(stage.run(store, {}, {}))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(r.status for r in results) == ["cached", "cached", "ran"]
