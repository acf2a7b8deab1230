"""The deployment path as a user types it, against a real `prefect server start` on 127.0.0.1 with
basic auth on: on SQLite (a run, a past-dated run, the automation, the schedule) and on PostgreSQL
(``imgflow server start``'s default: a worker killed in the middle of training, a new worker, a rerun
that resumes). Each starts its server, turns away a client without the credentials and deploys
without any hint of where the repository is (deploy records the folder it runs in)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.postgres import server_programs
from flows.server import RunningServer, prefect_server, server_state
from imgflow.errors import UserError
from imgflow.lifetime import descendants, running
from imgflow.testing import partitioned_parquet

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Deployed:
    """A server with imgflow's deployments on it, and the commands a user would type against it."""

    server: RunningServer
    tmp: Path
    env: dict[str, str]

    def prefect(self, *args: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env or self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        assert result.returncode == 0 or not check, f"prefect {' '.join(args)}:\n{result.stdout[-4000:]}"
        return result

    def worker(self, name: str) -> subprocess.Popen:
        with (self.tmp / f"{name}.log").open("w") as log:
            return subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "imgflow", "--name", name],
                                    cwd=self.tmp, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, worker: subprocess.Popen) -> None:
        worker.terminate()
        worker.wait(timeout=60)

    def summary(self, model: str) -> str:
        """The latest run-summary artifact's markdown, as the UI shows it."""
        shown = self.prefect("artifact", "inspect", f"imgflow-run-{model}", "--output", "json")
        return max(json.loads(shown.stdout), key=lambda version: version["created"])["data"]


def _postgres_missing() -> str:
    try:
        server_programs()
    except UserError as missing:
        return str(missing)
    return ""


@pytest.fixture
def deployed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployed]:
    database = request.param
    if database == "postgres" and _postgres_missing():
        pytest.skip(_postgres_missing())
    # The server's folder is outside pytest's, which only its owner may enter: PostgreSQL, run as
    # `postgres` under root, could not reach a cluster there.
    with tempfile.TemporaryDirectory(prefix="imgflow-server-") as name:
        os.chmod(name, 0o711)
        home = Path(name) / "server"
        with prefect_server(home, database=database, auth=True) as server:
            base = {key: value for key, value in os.environ.items() if key not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "IMGFLOW_REPO")}
            deployed = Deployed(server, tmp_path, {**base, "PREFECT_HOME": str(tmp_path / "client"), **server.client_env()})
            # A client without the credentials is turned away.
            intruder = {key: value for key, value in deployed.env.items() if key != "PREFECT_API_AUTH_STRING"}
            refused = deployed.prefect("work-pool", "ls", check=False, env=intruder)
            assert refused.returncode != 0 and "401" in refused.stdout, refused.stdout[-2000:]

            deployed.prefect("work-pool", "create", "imgflow", "--type", "process")
            listed = deployed.prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml").stdout
            assert all(name in listed for name in ("train/retrain", "backfill/backfill", "predict/predict"))
            inspected = deployed.prefect("deployment", "inspect", "train/retrain").stdout
            assert f"'directory': '{REPO}'" in inspected  # where workers run the flows from
            yield deployed
        assert server_state(home) is None


@pytest.mark.parametrize("deployed", ["sqlite"], indirect=True)
def test_on_sqlite_a_deployment_run_a_past_dated_run_the_automation_and_the_schedule(deployed: Deployed) -> None:
    tmp = deployed.tmp
    worker = deployed.worker("worker")
    try:
        artifacts = tmp / "artifacts"
        run = deployed.prefect("deployment", "run", "train/retrain", "--param", "dataset=sample:mnist5k",
                               "--param", "epochs=1", "--param", f"artifacts={artifacts}", "--watch", timeout=600)
        # A retrain scheduled in the past reads a partitioned source up to its own date: a backfill.
        lake = partitioned_parquet(tmp / "lake", ["2024-05-01", "2024-05-02", "2024-05-03"], per_day=150)
        past = deployed.prefect("deployment", "run", "train/retrain", "--param", f"dataset=parquet:{lake}",
                                "--param", "epochs=1", "--param", "min_accuracy=0", "--param", f"artifacts={tmp / 'past'}",
                                "--start-at", "2024-05-02 03:00", "--watch", timeout=600)
    finally:
        deployed.stop(worker)
    assert "Completed" in run.stdout, run.stdout[-3000:] + (tmp / "worker.log").read_text()[-3000:]
    for stage in ("download", "clean", "shard", "train", "validate"):
        assert list((artifacts / stage).glob("*/manifest.json")), stage
    assert (artifacts / "runs.jsonl").is_file()
    assert "Completed" in past.stdout, past.stdout[-3000:]
    logged = json.loads((tmp / "past" / "runs.jsonl").read_text().splitlines()[-1])
    assert logged["partitions"] == {"2024-05-01": "ran", "2024-05-02": "ran"}

    created = deployed.prefect("automation", "create", "--from-file", "deploy/automation-rejected.yaml")
    assert "Created automation 'imgflow model rejected'" in created.stdout
    inspected = deployed.prefect("deployment", "inspect", "train/retrain")
    assert "0 3 * * *" in inspected.stdout and "UTC" in inspected.stdout


@pytest.mark.parametrize("deployed", ["postgres"], indirect=True)
def test_on_postgres_a_worker_killed_in_training_then_a_new_worker_resumes_and_promotes(deployed: Deployed) -> None:
    tmp, artifacts = deployed.tmp, deployed.tmp / "artifacts"
    params = ["--param", "dataset=sample:mnist5k", "--param", "epochs=3", "--param", "min_accuracy=0.9", "--param", f"artifacts={artifacts}"]

    def in_training() -> bool:
        progress = list((artifacts / "train").glob(".work-*/progress.json"))
        return bool(progress) and json.loads(progress[0].read_text())["epoch"] >= 1

    worker = deployed.worker("doomed")
    try:
        started = deployed.prefect("deployment", "run", "train/retrain", *params)
        killed_run = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)  # type: ignore[union-attr]
        deadline = time.monotonic() + 300
        while not in_training():
            assert worker.poll() is None and time.monotonic() < deadline, (tmp / "doomed.log").read_text()[-3000:]
            time.sleep(0.1)
    finally:
        # The machine dies: the worker and everything under it (the flow run's process, its pools), at once.
        doomed = {worker.pid: 0, **descendants([worker.pid])}
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        worker.wait(timeout=60)
    deadline = time.monotonic() + 30
    while running({pid: started for pid, started in doomed.items() if pid != worker.pid}):
        assert time.monotonic() < deadline, "processes of the killed worker survived"
        time.sleep(0.1)
    assert not list((artifacts / "train").glob("*/manifest.json")), "the killed training must not look complete"

    worker = deployed.worker("replacement")
    try:
        rerun = deployed.prefect("deployment", "run", "train/retrain", *params, "--watch", timeout=600)
    finally:
        deployed.stop(worker)
    assert "Completed" in rerun.stdout, rerun.stdout[-3000:] + (tmp / "replacement.log").read_text()[-3000:]
    summary = deployed.summary("mnist5k")
    assert "PROMOTED as v1" in summary, summary
    for stage in ("download", "clean", "shard"):
        assert f"| {stage} | cached |" in summary, summary  # what the killed run finished is reused
    assert re.search(r"\| train \| ran \(resumed from epoch [1-3]\) \|", summary), summary
    assert len(list((artifacts / "train").glob("*/manifest.json"))) == 1 and not list((artifacts / "train").glob(".work-*"))
    killed = deployed.prefect("flow-run", "inspect", killed_run).stdout
    assert "COMPLETED" not in killed, "the killed run is never taken as complete"
