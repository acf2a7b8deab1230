"""The deployment path as a user types it, against a real `prefect server start` on 127.0.0.1 with
basic auth on, on SQLite and on PostgreSQL (``imgflow server start``'s default)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.postgres import server_programs
from flows.server import prefect_server, server_state
from imgflow.errors import UserError
from imgflow.testing import partitioned_parquet

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _postgres_missing() -> str:
    try:
        server_programs()
    except UserError as missing:
        return str(missing)
    return ""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(bool(_postgres_missing()), reason=_postgres_missing()))])
def database(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def server_home() -> Iterator[Path]:
    """The server's folder, outside pytest's own (which only its owner may enter: PostgreSQL, run as
    `postgres` under root, could not reach a cluster there)."""
    with tempfile.TemporaryDirectory(prefix="imgflow-server-") as name:
        os.chmod(name, 0o711)
        yield Path(name)


def test_deploy_start_a_worker_and_run_retrain(tmp_path: Path, server_home: Path, database: str) -> None:
    with prefect_server(server_home, database=database, auth=True) as server:
        # No IMGFLOW_REPO or any other hint of the repository: deploy records the folder it runs in.
        base = {key: value for key, value in os.environ.items() if key not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "IMGFLOW_REPO")}
        env = {**base, "PREFECT_HOME": str(tmp_path / "client"), **server.client_env()}

        def prefect(*args: str, timeout: float = 120, check: bool = True, environ: dict[str, str] = env) -> subprocess.CompletedProcess:
            result = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=environ, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
            assert result.returncode == 0 or not check, f"prefect {' '.join(args)}:\n{result.stdout[-4000:]}"
            return result

        # A client without the credentials is turned away.
        intruder = {key: value for key, value in env.items() if key != "PREFECT_API_AUTH_STRING"}
        refused = prefect("work-pool", "ls", check=False, environ=intruder)
        assert refused.returncode != 0 and "401" in refused.stdout, refused.stdout[-2000:]

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
        assert f"'directory': '{REPO}'" in inspected.stdout  # where the worker ran the flows from
    assert server_state(server_home) is None
