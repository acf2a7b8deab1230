"""The artifact store on an object-store root, against a real local S3 server (moto's).

Two ``ArtifactStore`` objects with different mirrors stand for two machines sharing one ``s3://`` root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from imgflow.registry import versions as registry
from imgflow.runtime.errors import ConfigError
from imgflow.store.stage import Stage
from imgflow.store.artifacts import MANIFEST, ArtifactStore
from imgflow.store.objectstore import LeaseLost, ObjectRoot
from imgflow.store.roots import open_store


def _machines(root: str, tmp_path: Path, count: int = 2) -> list[ArtifactStore]:
    return [open_store(root, mirror=tmp_path / f"machine-{i}") for i in range(count)]


def _counting(calls: list[int], text: str = "hello", pause: float = 0.0) -> Stage:
    def build(out_dir: Path, config: dict, inputs: dict) -> dict:
        calls.append(1)
        time.sleep(pause)
        (out_dir / "out.txt").write_text(f"{text} {len(calls)}")
        (out_dir / "deep").mkdir()
        (out_dir / "deep" / "part.bin").write_bytes(os.urandom(1000))
        return {"n": len(calls)}

    return Stage("demo", "1", build)


def test_an_output_built_on_one_machine_is_complete_and_fetched_on_another(s3_root: str, tmp_path: Path) -> None:
    here, there = _machines(s3_root, tmp_path)
    calls: list[int] = []
    built = _counting(calls).run(here, {}, {})
    assert built.status == "ran"
    remote = ObjectRoot(s3_root)
    assert remote.files(f"demo/{built.key}") == ["deep/part.bin", MANIFEST, "out.txt"]

    found = _counting(calls).run(there, {}, {})
    assert found.status == "cached" and calls == [1] and found.fingerprint == built.fingerprint
    assert not Path(found.path).exists(), "a cached output is fetched only where its files are read"
    local = there.localize(found)
    assert local.path == str(there.stage_dir("demo", built.key)) and local.status == "cached"
    for name in ("out.txt", "deep/part.bin", MANIFEST):
        assert local.file(name).read_bytes() == built.file(name).read_bytes()


def test_files_without_a_manifest_do_not_count(s3_root: str, tmp_path: Path) -> None:
    (store,) = _machines(s3_root, tmp_path, 1)
    calls: list[int] = []
    stage = _counting(calls)
    key = stage.key({}, {})
    ObjectRoot(s3_root).write_bytes(f"demo/{key}/out.txt", b"left by a run killed while publishing")
    assert store.lookup("demo", key) is None
    result = store.localize(stage.run(store, {}, {}))
    assert result.status == "ran" and result.file("out.txt").read_text() == "hello 1"
    assert ObjectRoot(s3_root).read_bytes(f"demo/{key}/out.txt") == b"hello 1"


def test_a_fetched_file_that_does_not_match_its_manifest_is_refused(s3_root: str, tmp_path: Path) -> None:
    here, there = _machines(s3_root, tmp_path)
    built = _counting([]).run(here, {}, {})
    ObjectRoot(s3_root).write_bytes(f"demo/{built.key}/out.txt", b"tampered")
    with pytest.raises(OSError, match=rf"demo/{built.key}/out.txt does not match its manifest"):
        there.lookup("demo", built.key)
    assert not there.stage_dir("demo", built.key).exists(), "nothing half-fetched is left to be taken for complete"


def test_force_replaces_the_remote_output_and_its_stale_files(s3_root: str, tmp_path: Path) -> None:
    here, there = _machines(s3_root, tmp_path)
    calls: list[int] = []
    first = _counting(calls).run(here, {}, {})
    ObjectRoot(s3_root).write_bytes(f"demo/{first.key}/stale.txt", b"from an older build")
    assert there.localize(there.lookup("demo", first.key)).file("out.txt").read_text() == "hello 1"

    forced = _counting(calls).run(here, {}, {}, force=True)
    assert forced.status == "ran" and calls == [1, 1]
    assert "stale.txt" not in ObjectRoot(s3_root).files(f"demo/{first.key}")
    assert there.localize(there.lookup("demo", first.key)).file("out.txt").read_text() == "hello 2", "the mirror follows"


def test_two_machines_asking_for_one_output_build_it_once(s3_root: str, tmp_path: Path) -> None:
    machines = _machines(s3_root, tmp_path, 3)
    calls: list[int] = []
    stage = _counting(calls, pause=1.0)
    results = []
    threads = [threading.Thread(target=lambda m=m: results.append(stage.run(m, {}, {}))) for m in machines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(r.status for r in results) == ["cached", "cached", "ran"]
    assert not [f for f in ObjectRoot(s3_root).files("demo") if ".lease-" in f], "the lease is let go"


def test_an_output_complete_here_but_never_published_is_published_not_rebuilt(s3_root: str, tmp_path: Path) -> None:
    (store,) = _machines(s3_root, tmp_path, 1)
    calls: list[int] = []
    built = _counting(calls).run(store, {}, {})
    for name in ObjectRoot(s3_root).files(f"demo/{built.key}"):  # as if killed before publishing
        ObjectRoot(s3_root).delete(f"demo/{built.key}/{name}")
    assert store.lookup("demo", built.key) is None
    again = _counting(calls).run(store, {}, {})
    assert calls == [1] and again.fingerprint == built.fingerprint
    assert MANIFEST in ObjectRoot(s3_root).files(f"demo/{built.key}")


_HOLD = """
import sys, time
from imgflow.store.objectstore import ObjectRoot
with ObjectRoot(sys.argv[1]).lease("held"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_dead_holders_lease_is_taken_over_after_one_lease_period(s3_root: str) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, s3_root], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        # Alive, it renews: a waiter gets nothing for several lease periods.
        waiter = threading.Thread(target=lambda: ObjectRoot(s3_root).lease("held").__enter__(), daemon=True)
        waiter.start()
        waiter.join(timeout=5)
        assert waiter.is_alive(), "a live holder's lease was taken"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    started = time.monotonic()
    waiter.join(timeout=30)
    assert not waiter.is_alive(), "the dead holder's lease was never taken over"
    assert time.monotonic() - started < 10


def test_a_holder_that_lost_its_lease_does_not_publish(s3_root: str) -> None:
    remote = ObjectRoot(s3_root)
    with pytest.raises(LeaseLost), remote.lease("held") as lease:
        # Someone else took it over (as a waiter does when the holder stalls for a lease period).
        boto3.client("s3").put_object(Bucket="imgflow-test", Key=lease.key, Body=b"another holder")
        time.sleep(1.5)  # past the holder's next renewal
        lease.check()
    assert remote.read_bytes("held") == b"another holder", "a lost lease is not deleted by its old holder"


def test_the_registry_is_shared_through_the_root(s3_root: str, tmp_path: Path) -> None:
    here, there = _machines(s3_root, tmp_path)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx bytes")
    card = {"model_fingerprint": "abc", "metrics": {"accuracy": 0.9}}
    with here.models("digits") as root:
        version = registry.register(root, "digits", {"model.onnx": model}, card, {"model_card.md": "# {version}"})
        registry.set_champion(root, "digits", version, reason="first")
    assert registry.champion(there.folder, "digits") is None
    assert there.pull_models() == there.folder
    pointer = registry.champion(there.folder, "digits")
    assert pointer["version"] == "v1" and pointer["accuracy"] == 0.9
    assert (Path(pointer["path"]) / "model.onnx").read_bytes() == b"onnx bytes"
    assert (Path(pointer["path"]) / "model_card.md").read_text() == "# v1"

    # The second machine registers the next version; the first sees it after a pull.
    card2 = {"model_fingerprint": "def", "metrics": {"accuracy": 0.95}}
    with there.models("digits") as root:
        assert registry.register(root, "digits", {"model.onnx": model}, card2, {}) == "v2"
        registry.set_champion(root, "digits", "v2", reason="better")
    here.pull_models("digits")
    assert registry.versions(here.folder, "digits") == ["v1", "v2"]
    assert [m["version"] for m in registry.history(here.folder, "digits")] == ["v1", "v2"]
    assert json.loads((here.folder / "models" / "digits" / "v2" / "card.json").read_text())["version"] == "v2"
    assert here.pull_models("nope") == here.folder and registry.model_names(here.folder) == ["digits"]

    # The run summary's link to a registered file opens in a browser on any machine: a presigned GET.
    link = here.link("models/digits/v2/card.json")
    assert link.startswith("http") and "Signature" in link, link
    with urllib.request.urlopen(link, timeout=10) as response:
        assert json.loads(response.read())["version"] == "v2"


def test_a_holder_whose_renewals_keep_failing_gives_the_lease_up(s3_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = ObjectRoot(s3_root)
    with pytest.raises(LeaseLost, match="renewals failed: .*connection refused"), remote.lease("held") as lease:
        def unreachable(**condition: str) -> bool:
            raise ConnectionError("connection refused")

        monkeypatch.setattr(lease, "_put", unreachable)
        time.sleep(1.0)
        lease.check()  # one failed renewal: still within the period, still ours
        time.sleep(2.5)
        lease.check()


def test_a_worker_pulls_one_version_not_the_registry(s3_root: str, tmp_path: Path) -> None:
    here, worker = _machines(s3_root, tmp_path)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx bytes")
    with here.models("digits") as root:
        for fingerprint in ("a", "b"):
            registry.register(root, "digits", {"model.onnx": model}, {"model_fingerprint": fingerprint, "metrics": {}}, {})
    folder = worker.pull_version("digits", "v2")
    assert (folder / "model.onnx").read_bytes() == b"onnx bytes" and json.loads((folder / "card.json").read_text())["version"] == "v2"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["v2"], "v1 is not fetched, nor the champion pointer"
    assert worker.pull_version("digits", "v2") == folder  # there already: nothing fetched
    with pytest.raises(ConfigError, match="not a registered model version"):
        worker.pull_version("digits", "v3")


def test_training_checkpoints_reach_another_machine_through_the_root(s3_root: str, tmp_path: Path) -> None:
    """What a dying machine committed last is what the next one resumes from: the new files, then
    progress.json; files the folder dropped are dropped in the store too."""
    from imgflow.training.checkpoints import PROGRESS, CheckpointMirror, load_progress

    uri = ObjectRoot(s3_root).url("train/.work-k1")
    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    for folder in (first, second, third):
        folder.mkdir()
    mirror = CheckpointMirror(uri)
    for epoch in (1, 2):
        for old in first.glob("epoch-*"):
            old.unlink()
        (first / f"epoch-{epoch:04d}.keras").write_bytes(os.urandom(100))
        (first / "best.weights.h5").write_bytes(f"best of {epoch}".encode())
        (first / PROGRESS).write_text(json.dumps({"epoch": epoch, "checkpoint": f"epoch-{epoch:04d}.keras", "history": {}}))
        mirror.push(first)
    assert ObjectRoot(s3_root).files("train/.work-k1") == ["best.weights.h5", "epoch-0002.keras", PROGRESS]

    CheckpointMirror(uri).pull(second)
    assert load_progress(second)["epoch"] == 2
    assert {p.name: p.read_bytes() for p in second.iterdir()} == {p.name: p.read_bytes() for p in first.iterdir()}
    (third / PROGRESS).write_text(json.dumps({"epoch": 5, "checkpoint": "mine.keras", "history": {}}))
    CheckpointMirror(uri).pull(third)
    assert [p.name for p in third.iterdir()] == [PROGRESS], "a machine's own checkpoints win"
    empty = tmp_path / "empty"
    empty.mkdir()
    CheckpointMirror(ObjectRoot(s3_root).url("train/.work-none")).pull(empty)
    assert not any(empty.iterdir()) and load_progress(empty) is None, "nothing in the store: training starts afresh"


def test_an_object_read_while_another_machine_replaces_it_is_one_whole_version(s3_root: str) -> None:
    """pyarrow reads an object's size, then that many bytes: against an object being replaced, that
    gave an old size with new bytes (a truncated champion pointer, a torn checkpoint record)."""
    root = ObjectRoot(s3_root)
    versions = [b"a" * 300, b"b" * 320, b"c" * 280]
    root.write_bytes("pointer.json", versions[0])
    stop = threading.Event()

    def rewrite() -> None:
        turn = 0
        while not stop.is_set():
            turn += 1
            root.write_bytes("pointer.json", versions[turn % 3])

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        torn = [data[:10] for data in (root.read_bytes("pointer.json") for _ in range(300)) if data not in versions]
    finally:
        stop.set()
        writer.join()
    assert not torn
    assert root.read_bytes("nothing-here") is None
