"""The deployment path as a user types it, against a real `prefect server start` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.server import prefect_server
from imgflow.testing import partitioned_parquet

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_deploy_start_a_worker_and_run_retrain(tmp_path: Path) -> None:
    home = tmp_path / "prefect"
    with prefect_server(home) as url:
        env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(home), "IMGFLOW_REPO": str(REPO)}

        def prefect(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
            result = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
            assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout[-4000:]}"
            return result

        prefect("work-pool", "create", "imgflow", "--type", "process")
        deployed = prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml")
        for deployment in ("train/retrain", "backfill/backfill", "predict/predict"):
            assert deployment in deployed.stdout

        with (tmp_path / "worker.log").open("w") as log:
            worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "imgflow"],
                                      cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                artifacts = tmp_path / "artifacts"
                run = prefect("deployment", "run", "train/retrain", "--param", "dataset=sample:mnist5k",
                              "--param", "epochs=1", "--param", f"artifacts={artifacts}", "--watch", timeout=600)
                # A retrain scheduled in the past reads a partitioned source up to its own date: a backfill.
                lake = partitioned_parquet(tmp_path / "lake", ["2024-05-01", "2024-05-02", "2024-05-03"], per_day=150)
                past = prefect("deployment", "run", "train/retrain", "--param", f"dataset=parquet:{lake}",
                               "--param", "epochs=1", "--param", "min_accuracy=0", "--param", f"artifacts={tmp_path / 'past'}",
                               "--start-at", "2024-05-02 03:00", "--watch", timeout=600)
            finally:
                worker.terminate()
                worker.wait(timeout=60)
        assert "Completed" in run.stdout, run.stdout[-3000:] + (tmp_path / "worker.log").read_text()[-3000:]
        for stage in ("download", "clean", "shard", "train", "validate"):
            assert list((artifacts / stage).glob("*/manifest.json")), stage
        assert (artifacts / "runs.jsonl").is_file()
        assert "Completed" in past.stdout, past.stdout[-3000:]
        logged = json.loads((tmp_path / "past" / "runs.jsonl").read_text().splitlines()[-1])
        assert logged["partitions"] == {"2024-05-01": "ran", "2024-05-02": "ran"}

        created = prefect("automation", "create", "--from-file", "deploy/automation-rejected.yaml")
        assert "Created automation 'imgflow model rejected'" in created.stdout

        inspected = prefect("deployment", "inspect", "train/retrain")
        assert "0 3 * * *" in inspected.stdout and "UTC" in inspected.stdout
