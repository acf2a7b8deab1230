"""Crash safety with real processes and real signals.

SIGKILL inside every stage (at its worst moment: files written, manifest not yet), a training killed
mid-way that resumes, two runs of the same work at once, and a cached rerun that never imports
TensorFlow. Each run is a separate `imgflow` process with Prefect's temporary server.
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

from imgflow.objectstore import CACHE, ObjectRoot
from imgflow.store import FAILPOINT, MANIFEST

pytestmark = pytest.mark.slow

STAGES = ("download", "clean", "shard", "train", "validate", "export")
SMALL = ["--dataset", "digits", "--limit", "500", "--epochs", "2", "--min-accuracy", "0"]


def _start(artifacts: Path | str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "flows.cli", "run", "--artifacts", str(artifacts), "--json", *args]
    return subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill takes Prefect's server with it
    )


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
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _finish(_start(tmp_path_factory.mktemp("uninterrupted") / "artifacts", *SMALL))


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_inside_a_stage_then_rerun_matches_an_uninterrupted_run(tmp_path: Path, stage: str, uninterrupted: dict) -> None:
    artifacts = tmp_path / "artifacts"
    process = _start(artifacts, *SMALL, env={FAILPOINT: stage})
    _kill_when(process, lambda: any((artifacts / stage).glob(".tmp-*/.failpoint")))
    assert process.returncode == -signal.SIGKILL
    # The killed stage's files are on disk, but nothing of it counts as complete.
    assert any((artifacts / stage).glob(".tmp-*"))
    assert not any((artifacts / stage).glob(f"*/{MANIFEST}"))

    rerun = _finish(_start(artifacts, *SMALL))
    position = STAGES.index(stage)
    assert {s: rerun["stages"][s]["status"] for s in STAGES} == {
        s: "cached" if i < position else "ran" for i, s in enumerate(STAGES)
    }
    assert _fingerprints(rerun) == _fingerprints(uninterrupted)
    assert rerun["metrics"] == uninterrupted["metrics"] and rerun["decision"] == "promoted"
    assert not any((artifacts / stage).glob(".tmp-*")), "the rerun cleans up what the killed run left"


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_while_publishing_to_s3_then_another_machine_finishes(
    tmp_path: Path, stage: str, uninterrupted: dict, s3_root: str
) -> None:
    """The object-store root's worst moment: the stage's files uploaded, its manifest not. The run
    dies holding the key's lease; a run on another machine (another mirror) takes the lease over
    once it stops being renewed, rebuilds that stage and matches an uninterrupted run."""
    mirror_a, mirror_b = tmp_path / "machine-a", tmp_path / "machine-b"
    process = _start(s3_root, *SMALL, env={FAILPOINT: f"{stage}@publish", CACHE: str(mirror_a)})
    _kill_when(process, lambda: any(mirror_a.glob(f"*/{stage}/.failpoint-*")))
    key = next(mirror_a.glob(f"*/{stage}/.failpoint-*")).name.removeprefix(".failpoint-")
    remote = ObjectRoot(s3_root)
    assert remote.files(f"{stage}/{key}") and MANIFEST not in remote.files(f"{stage}/{key}"), "files, no manifest"

    rerun = _finish(_start(s3_root, *SMALL, env={CACHE: str(mirror_b)}))
    position = STAGES.index(stage)
    assert {s: rerun["stages"][s]["status"] for s in STAGES} == {
        s: "cached" if i < position else "ran" for i, s in enumerate(STAGES)
    }
    assert rerun["stages"][stage]["key"] == key
    assert _fingerprints(rerun, s3_root) == _fingerprints(uninterrupted)
    assert rerun["metrics"] == uninterrupted["metrics"] and rerun["decision"] == "promoted"
    assert not [f for f in remote.files("") if ".lease-" in f], "every lease is let go or taken over"


def test_killed_training_resumes_from_its_last_epoch(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    args = ["--dataset", "mnist5k", "--limit", "1500", "--epochs", "8", "--min-accuracy", "0"]

    def in_epoch_4() -> bool:
        progress = list((artifacts / "train").glob(".work-*/progress.json"))
        return bool(progress) and json.loads(progress[0].read_text())["epoch"] >= 3

    process = _start(artifacts, *args)
    _kill_when(process, in_epoch_4)
    rerun = _finish(_start(artifacts, *args))
    train = rerun["stages"]["train"]
    assert train["status"] == "ran" and train["resumed_from_epoch"] >= 3
    assert rerun["decision"] == "promoted"
    history = json.loads((Path(train["path"]) / "history.json").read_text())
    assert len(history["loss"]) == 8, "the curves cover every epoch, before and after the kill"
    assert not any((artifacts / "train").glob(".work-*")), "the checkpoints go once the model is complete"


def test_two_runs_at_once_compute_each_stage_once(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    runs = [
        _start(artifacts, *SMALL, env={"PREFECT_HOME": str(tmp_path / f"prefect-{i}")}) for i in range(2)
    ]
    first, second = (_finish(run) for run in runs)
    for stage in STAGES:
        assert sorted([first["stages"][stage]["status"], second["stages"][stage]["status"]]) == ["cached", "ran"], stage
        assert first["stages"][stage]["key"] == second["stages"][stage]["key"]
        assert len(list((artifacts / stage).glob(f"*/{MANIFEST}"))) == 1
    assert first["version"] == second["version"] == "v1"
    assert sorted(p.name for p in (artifacts / "models" / "digits").iterdir() if p.is_dir()) == ["v1"]

    _cached_rerun_skips_tensorflow(str(artifacts))


def test_two_machines_at_once_on_s3_compute_each_stage_once(tmp_path: Path, s3_root: str) -> None:
    runs = [
        _start(s3_root, *SMALL, env={"PREFECT_HOME": str(tmp_path / f"prefect-{i}"), CACHE: str(tmp_path / f"machine-{i}")})
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
