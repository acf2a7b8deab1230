"""MultiWorkerMirroredStrategy across two local worker processes on CPU, started by the launcher."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgflow.runtime.lifetime import descendants
from imgflow.store.artifacts import ArtifactStore, StageResult
from tests.helpers import survivors_of_kill

pytestmark = pytest.mark.slow


def _launch(store: ArtifactStore, shards: StageResult, tmp_path: Path, epochs: int = 2) -> subprocess.Popen:
    config = tmp_path / "train.toml"
    config.write_text(f"[train]\nmodel = 'cnn'\nwidth = 4\nepochs = {epochs}\nbatch_size = 32\ntranslate = 0.0\nrotate = 0.0\nzoom = 0.0\n")
    return subprocess.Popen(
        [sys.executable, "-m", "imgflow.pipeline.distributed", "--local-workers", "2", "--artifacts", str(store.folder),
         "--shards", shards.key, "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_two_workers_train_one_model_and_the_chief_stores_it(store: ArtifactStore, shards: StageResult, tmp_path: Path) -> None:
    launcher = _launch(store, shards, tmp_path)
    out, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.startswith('{"task_index"')]  # among training's progress
    reports = sorted((json.loads(line) for line in lines), key=lambda report: report["task_index"])
    assert [r["task_index"] for r in reports] == [0, 1]
    assert {r["hardware"]["strategy"] for r in reports} == {"multi_worker"}
    assert {r["hardware"]["replicas"] for r in reports} == {2}
    # Synchronous data parallelism: both workers end with the same trained weights, under the same key.
    assert reports[0]["trainable_fingerprint"] == reports[1]["trainable_fingerprint"]
    assert reports[0]["key"] == reports[1]["key"]
    stored = store.lookup("train", reports[0]["key"])
    assert stored is not None and stored.file("model.keras").is_file()
    assert stored.fingerprint == reports[0]["model_fingerprint"]


def test_the_launcher_killed_alone_takes_its_workers_with_it(store: ArtifactStore, shards: StageResult, tmp_path: Path) -> None:
    launcher = _launch(store, shards, tmp_path, epochs=1000)  # training that would outlast the test
    deadline = time.monotonic() + 60
    while len(descendants([launcher.pid])) < 2:
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()[-3000:]
        time.sleep(0.05)
    time.sleep(3)  # the workers are importing TensorFlow or forming the cluster
    assert survivors_of_kill(launcher, within=10) == {}
