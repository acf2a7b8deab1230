"""Crash safety with real processes and real signals.

SIGKILL inside every stage (at its worst moment: files written, manifest not yet), a training killed
mid-way that resumes, two runs of the same work at once, and a cached rerun that never imports
TensorFlow. Each run is a separate `imgflow` process; they talk to one `prefect server start` per test
process (``prefect_api``), as runs on a machine with a Prefect server do, instead of each starting
Prefect's temporary server (what a kill does to that server is test_orphans.py's subject).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imgflow.store.objectstore import CACHE, ObjectRoot
from imgflow.store.artifacts import FAILPOINT, MANIFEST
from tests.conftest import built_once

pytestmark = pytest.mark.slow

STAGES = ("download", "clean", "shard", "train", "validate", "export")
SMALL = ["--dataset", "digits", "--limit", "500", "--epochs", "2", "--min-accuracy", "0"]


Start = Callable[..., subprocess.Popen]


@pytest.fixture(scope="module")
def start(prefect_api: str) -> Start:
    """``start(artifacts, *args, env=None)``: an ``imgflow run --json`` process on ``prefect_api``."""

    def run(artifacts: Path | str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        command = [sys.executable, "-m", "flows.cli", "run", "--artifacts", str(artifacts), "--json", *args]
        return subprocess.Popen(
            command,
            env={**os.environ, "PREFECT_API_URL": prefect_api, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: the kill takes its pools and watcher with it
        )

    return run


def _finish(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended before it could be killed:\n{process.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the run never reached the point to kill it at"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def _fingerprints(summary: dict, root: str | None = None) -> dict[str, str]:
    """Output fingerprints of every stage up to validate, and the export's parity check, read from
    the local folders the summary names or, given ``root``, from that object-store root.

    A SavedModel's bytes differ from one export to the next (TensorFlow names traced functions with
    process counters), so an export is compared by what it computes: its parity with the model.
    """
    def read(stage: str, name: str) -> dict:
        entry = summary["stages"][stage]
        if root is None:
            return json.loads((Path(entry["path"]) / name).read_text())
        return json.loads(ObjectRoot(root).read_bytes(f"{stage}/{entry['key']}/{name}"))

    found = {stage: read(stage, MANIFEST)["fingerprint"] for stage, entry in summary["stages"].items() if entry.get("path") and stage != "export"}
    return {**found, "export parity": read("export", "parity.json")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, start: Start) -> dict:
    """The run the killed ones must match, built once for every test worker (``built_once``)."""
    return built_once(tmp_path_factory, "crash-uninterrupted", lambda folder: _finish(start(folder / "artifacts", *SMALL)))[1]


def _statuses(summary: dict) -> dict[str, str]:
    return {s: summary["stages"][s]["status"] for s in STAGES}


def test_sigkill_inside_each_stage_then_the_reruns_match_an_uninterrupted_run(tmp_path: Path, start: Start, uninterrupted: dict) -> None:
    """One run killed in each stage in turn: the run killed in a stage rebuilt the stage killed in the
    run before (cleaning up what it left) and reused everything before that; the last rerun completes
    and every output matches an uninterrupted run's."""
    artifacts = tmp_path / "artifacts"
    for position, stage in enumerate(STAGES):
        process = start(artifacts, *SMALL, env={FAILPOINT: stage})
        _kill_when(process, lambda: any((artifacts / stage).glob(".tmp-*/.failpoint")))
        assert process.returncode == -signal.SIGKILL
        # The killed stage's files are on disk, but nothing of it counts as complete.
        assert any((artifacts / stage).glob(".tmp-*"))
        assert not any((artifacts / stage).glob(f"*/{MANIFEST}")), stage
        for earlier in STAGES[:position]:
            assert len(list((artifacts / earlier).glob(f"*/{MANIFEST}"))) == 1, (stage, earlier)
            assert not any((artifacts / earlier).glob(".tmp-*")), f"{earlier}: the rerun cleans up what the killed run left"

    rerun = _finish(start(artifacts, *SMALL))
    assert _statuses(rerun) == {**dict.fromkeys(STAGES[:-1], "cached"), "export": "ran"}
    assert _fingerprints(rerun) == _fingerprints(uninterrupted)
    assert rerun["metrics"] == uninterrupted["metrics"] and rerun["decision"] == "promoted"
    assert not any(artifacts.glob("*/.tmp-*")), "the rerun cleans up what the killed run left"


# Publishing is one code path for every stage (``imgflow.store.artifacts``), so the object-store test kills it in
# the first stage, the one with a checkpoint scratch folder, and the last: the local test above kills
# every stage.
PUBLISHED = ("download", "train", "export")


def test_sigkill_while_publishing_a_stage_to_s3_then_another_machine_finishes(
    tmp_path: Path, start: Start, uninterrupted: dict, s3_root: str
) -> None:
    """The object-store root's worst moment, in stages in turn: the stage's files uploaded, its
    manifest not. Each run (a machine of its own: its own mirror) dies holding the key's lease; the
    next takes the lease over once it stops being renewed, rebuilds that stage, reuses the ones between
    and is killed in the next one. The last run finishes and matches an uninterrupted run."""
    remote = ObjectRoot(s3_root)
    keys = {}
    for stage in PUBLISHED:
        mirror = tmp_path / f"machine-{stage}"
        process = start(s3_root, *SMALL, env={FAILPOINT: f"{stage}@publish", CACHE: str(mirror)})
        _kill_when(process, lambda: any(mirror.glob(f"*/{stage}/.failpoint-*")))
        keys[stage] = next(mirror.glob(f"*/{stage}/.failpoint-*")).name.removeprefix(".failpoint-")
        files = remote.files(f"{stage}/{keys[stage]}")
        assert files and MANIFEST not in files, f"{stage}: files, no manifest"

    rerun = _finish(start(s3_root, *SMALL, env={CACHE: str(tmp_path / "machine-last")}))
    assert _statuses(rerun) == {**dict.fromkeys(STAGES[:-1], "cached"), "export": "ran"}
    assert {stage: rerun["stages"][stage]["key"] for stage in PUBLISHED} == keys
    assert _fingerprints(rerun, s3_root) == _fingerprints(uninterrupted)
    assert rerun["metrics"] == uninterrupted["metrics"] and rerun["decision"] == "promoted"
    assert not [f for f in remote.files("") if ".lease-" in f], "every lease is let go or taken over"


@pytest.mark.parametrize("root", ["local", "s3"])
def test_killed_training_resumes_from_its_last_epoch(tmp_path: Path, start: Start, root: str, request: pytest.FixtureRequest) -> None:
    """On a local root the rerun resumes from the checkpoints in the root's scratch folder; on an s3://
    root the rerun is another machine (its own mirror), which takes the dead run's lease over and
    resumes from the checkpoints it left in the bucket."""
    args = ["--dataset", "mnist5k", "--limit", "1500", "--epochs", "8", "--min-accuracy", "0"]
    if root == "local":
        artifacts: Path | str = tmp_path / "artifacts"
        machines: list[dict[str, str]] = [{}, {}]

        def epoch_committed() -> int:
            progress = list((tmp_path / "artifacts" / "train").glob(".work-*/progress.json"))
            return json.loads(progress[0].read_text())["epoch"] if progress else 0
    else:
        artifacts = request.getfixturevalue("s3_root")
        remote = ObjectRoot(artifacts)
        machines = [{CACHE: str(tmp_path / "machine-1")}, {CACHE: str(tmp_path / "machine-2")}]

        def epoch_committed() -> int:
            progress = [f for f in remote.files("train") if f.startswith(".work-") and f.endswith("/progress.json")]
            return json.loads(remote.read_bytes(f"train/{progress[0]}"))["epoch"] if progress else 0

    process = start(artifacts, *args, env=machines[0])
    _kill_when(process, lambda: epoch_committed() >= 3)
    rerun = _finish(start(artifacts, *args, env=machines[1]))
    train = rerun["stages"]["train"]
    assert train["status"] == "ran" and train["resumed_from_epoch"] >= 3
    assert rerun["decision"] == "promoted"
    history = json.loads((Path(train["path"]) / "history.json").read_text())
    assert len(history["loss"]) == 8, "the curves cover every epoch, before and after the kill"
    assert not epoch_committed() and not any(Path(train["path"]).parent.glob(".work-*")), "the checkpoints go once the model is complete"


def test_two_runs_at_once_compute_each_stage_once(tmp_path: Path, start: Start) -> None:
    """Slow by nature (about 30 s): two whole runs race on one root; nothing can be built beforehand."""
    artifacts = tmp_path / "artifacts"
    runs = [
        start(artifacts, *SMALL, env={"PREFECT_HOME": str(tmp_path / f"prefect-{i}")}) for i in range(2)
    ]
    first, second = (_finish(run) for run in runs)
    for stage in STAGES:
        assert sorted([first["stages"][stage]["status"], second["stages"][stage]["status"]]) == ["cached", "ran"], stage
        assert first["stages"][stage]["key"] == second["stages"][stage]["key"]
        assert len(list((artifacts / stage).glob(f"*/{MANIFEST}"))) == 1
    assert first["version"] == second["version"] == "v1"
    assert sorted(p.name for p in (artifacts / "models" / "digits").iterdir() if p.is_dir()) == ["v1"]

    _cached_rerun_skips_tensorflow(str(artifacts))


def test_two_machines_at_once_on_s3_compute_each_stage_once(tmp_path: Path, start: Start, s3_root: str) -> None:
    """Slow by nature (about 35 s): two whole runs race on one bucket; nothing can be built beforehand."""
    runs = [
        start(s3_root, *SMALL, env={"PREFECT_HOME": str(tmp_path / f"prefect-{i}"), CACHE: str(tmp_path / f"machine-{i}")})
        for i in range(2)
    ]
    first, second = (_finish(run) for run in runs)
    remote = ObjectRoot(s3_root)
    for stage in STAGES:
        assert sorted([first["stages"][stage]["status"], second["stages"][stage]["status"]]) == ["cached", "ran"], stage
        assert first["stages"][stage]["key"] == second["stages"][stage]["key"]
        assert [f for f in remote.files(stage) if f.endswith(MANIFEST)] == [f"{first['stages'][stage]['key']}/{MANIFEST}"]
    assert first["version"] == second["version"] == "v1"
    assert sorted({f.split("/")[0] for f in remote.files("models/digits") if "/" in f}) == ["v1"]
    _cached_rerun_skips_tensorflow(s3_root, {CACHE: str(tmp_path / "machine-3")})


def _cached_rerun_skips_tensorflow(artifacts: str, env: dict[str, str] | None = None) -> None:
    """A run over the same finished work is all cached and never imports TensorFlow."""
    script = (
        "import json, sys\n"
        "from flows.train import train\n"
        f"summary = train(dataset='digits', artifacts={str(artifacts)!r}, limit=500, epochs=2, min_accuracy=0.0)\n"
        "print(json.dumps({'tensorflow': 'tensorflow' in sys.modules,"
        " 'statuses': sorted({entry['status'] for entry in summary['stages'].values()})}))\n"
    )
    warm = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert json.loads(warm.stdout.strip().splitlines()[-1]) == {"tensorflow": False, "statuses": ["cached"]}
