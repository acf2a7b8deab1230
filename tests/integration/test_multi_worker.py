"""MultiWorkerMirroredStrategy across two local worker processes on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgflow.store import ArtifactStore, StageResult
from imgflow.testing import free_port

pytestmark = pytest.mark.slow


def test_two_workers_train_one_model_and_the_chief_stores_it(store: ArtifactStore, shards: StageResult, tmp_path: Path) -> None:
    config = tmp_path / "train.toml"
    config.write_text("[train]\nmodel = 'cnn'\nwidth = 4\nepochs = 2\nbatch_size = 32\ntranslate = 0.0\nrotate = 0.0\nzoom = 0.0\n")
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    processes = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "imgflow.distributed", "--artifacts", str(store.root), "--shards", shards.key,
             "--config", str(config)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(err[-3000:] for _, err in outputs)
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [r["task_index"] for r in reports] == [0, 1]
    assert {r["hardware"]["strategy"] for r in reports} == {"multi_worker"}
    assert {r["hardware"]["replicas"] for r in reports} == {2}
    # Synchronous data parallelism: both workers end with the same trained weights, under the same key.
    assert reports[0]["trainable_fingerprint"] == reports[1]["trainable_fingerprint"]
    assert reports[0]["key"] == reports[1]["key"]
    stored = store.lookup("train", reports[0]["key"])
    assert stored is not None and stored.file("model.keras").is_file()
    assert stored.fingerprint == reports[0]["model_fingerprint"]
