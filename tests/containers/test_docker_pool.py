"""The Docker work pool as a team runs it: a real `prefect server start`, the pools `imgflow server
start` creates, `prefect deploy` of deploy/prefect.yaml, and a real `prefect worker start --type
docker` that starts each flow run in a fresh container of imgflow's image, with the artifact root a
folder of this machine mounted into it. A container killed in the middle of training is marked
Crashed; the next run resumes from the checkpoint, promotes, and the registry on the shared folder
shows it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flows.pools import create_pools
from flows.server import prefect_server

pytestmark = [pytest.mark.containers, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A folder the containers' user (uid 10001) can write: pytest's own are its owner's alone."""
    folder = Path(tempfile.mkdtemp(prefix="imgflow-shared-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_docker_worker_runs_each_flow_run_in_a_container_a_killed_one_is_crashed_and_the_rerun_resumes(
    image: str, shared: Path, tmp_path: Path
) -> None:
    """Slow by nature (3-4 minutes): two deployment runs, each in a container that imports TensorFlow
    and Prefect afresh, the first killed in training. Nothing to share: the containers are the subject."""
    artifacts = shared / "artifacts"
    artifacts.mkdir()
    artifacts.chmod(0o777)
    with prefect_server(tmp_path / "server", database="sqlite", auth=True, heartbeat=30) as server:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(tmp_path / "client"), **server.client_env())

        def prefect(*args: str, timeout: float = 600) -> str:
            done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
            assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            return done.stdout

        assert {pool.name: pool.outcome for pool in create_pools(server.api_url, server.auth)}["imgflow-docker"] == "created"
        prefect("--no-prompt", "deploy", "--name", "retrain-docker", "--prefect-file", "deploy/prefect.yaml")
        run_args = ["deployment", "run", "train/retrain-docker", "--param", "limit=2000", "--param", "epochs=12",
                    "--param", "min_accuracy=0.5", "--job-variable", f'volumes=["{artifacts}:/artifacts"]']
        log = tmp_path / "worker.log"
        with log.open("w") as output:
            worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "imgflow-docker", "--type", "docker"],
                                      cwd=tmp_path, env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, stdout=output,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # Past its memory limit: the kernel kills the run, and the run says so.
            starved = prefect(*run_args, "--job-variable", "mem_limit=250m", "--job-variable", "memswap_limit=250m")
            starved_run = re.search(r"UUID: ([0-9a-f-]{36})", starved).group(1)  # type: ignore[union-attr]
            state = _final(prefect, starved_run, log)
            assert "CRASHED" in state and "out of memory (the container's limit is 250 MiB)" in state, state[-3000:]

            started = prefect(*run_args)
            killed = re.search(r"UUID: ([0-9a-f-]{36})", started).group(1)  # type: ignore[union-attr]
            container = _in_training(killed, artifacts, worker, log)
            subprocess.run(["docker", "kill", container], check=True, capture_output=True)
            assert "CRASHED" in _final(prefect, killed, log)
            assert not list((artifacts / "train").glob("*/manifest.json")), "the killed training must not look complete"

            rerun = prefect(*run_args, "--watch", timeout=900)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=60)
        assert "Completed" in rerun, rerun[-3000:] + log.read_text()[-3000:]
        logged = json.loads((artifacts / "runs.jsonl").read_text().splitlines()[-1])
        assert logged["decision"] == "promoted", logged
        shown = json.loads(prefect("artifact", "inspect", "imgflow-run-mnist5k", "--output", "json"))
        summary = max(shown, key=lambda version: version["created"])["data"]  # the run summary, as the UI shows it
        assert "PROMOTED as v1" in summary and "| download | cached |" in summary, summary
        assert re.search(r"\| train \| ran \(resumed from epoch ([1-9]|1[01])\) \|", summary), summary
        # The registry on the shared folder, read here, outside any container.
        listed = subprocess.run([sys.executable, "-m", "flows.cli", "models", "ls", "--artifacts", str(artifacts)],
                                capture_output=True, text=True, check=True).stdout
        assert re.search(r"\*\s*v1", listed), listed


def _final(prefect: Callable[..., str], flow_run: str, log: Path) -> str:
    """The flow run's `prefect flow-run inspect`, once its state is final and its container gone (the
    container's first process may still be saying why it ended)."""
    deadline = time.monotonic() + 600
    while not re.search(r"StateType\.(COMPLETED|FAILED|CRASHED|CANCELLED)", state := prefect("flow-run", "inspect", flow_run)) or _containers(
        flow_run
    ):
        assert time.monotonic() < deadline, state[-3000:] + log.read_text()[-3000:]
        time.sleep(2)
    return prefect("flow-run", "inspect", flow_run)


def _containers(flow_run: str) -> list[str]:
    found = subprocess.run(["docker", "ps", "-q", "--filter", f"label=io.prefect.flow-run-id={flow_run}"],
                           capture_output=True, text=True, check=True)
    return found.stdout.split()


def _in_training(flow_run: str, artifacts: Path, worker: subprocess.Popen, log: Path) -> str:
    """Wait until the flow run's container has committed a training epoch; return the container's id."""
    deadline = time.monotonic() + 600
    while not (found := _containers(flow_run)):
        assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    while True:
        assert _containers(flow_run) and time.monotonic() < deadline, log.read_text()[-3000:]
        progress = list((artifacts / "train").glob(".work-*/progress.json"))
        if progress and json.loads(progress[0].read_text()).get("epoch", 0) >= 1:
            return found[0]
        time.sleep(0.2)
