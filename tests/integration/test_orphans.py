"""A killed run leaves nothing running: SIGKILL to the ``imgflow`` process alone (as the out-of-memory
killer sends it) or to its whole process group (``timeout -s KILL``, ``kill -9 -- -PGID``, a CI
runner's cancel), then every process that was running below it (Prefect's temporary server, which
runs in a session of its own, the data stages' pools and their forkserver, a local Dask cluster's
workers) has ended within seconds, and nothing on the machine uses the run's ``PREFECT_HOME`` or
artifact root; and the rerun starts cleanly and reuses what was finished. (SIGINT and SIGTERM to
the group: tests/integration/test_stopping.py.)"""

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

from imgflow.runtime.lifetime import descendants
from imgflow.store.artifacts import MANIFEST
from tests.conftest import seed_prefect_home
from tests.helpers import left_behind, survivors_of_kill

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /proc")]

SMALL = ["--dataset", "digits", "--limit", "500", "--epochs", "2", "--min-accuracy", "0"]
STAGES = ("download", "clean", "shard", "train", "validate", "export")


def _run(artifacts: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--artifacts", str(artifacts), "--json", *(args or SMALL)],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # a group of its own, as a terminal's job or a CI step has
    )


def _commands(pid: int) -> list[str]:
    """The command lines of every process below ``pid``."""
    found = []
    for child in descendants([pid]):
        try:
            found.append(Path(f"/proc/{child}/cmdline").read_text().replace("\0", " "))
        except (FileNotFoundError, ProcessLookupError):  # it ended while we looked
            continue
    return found


def _wait_for(process: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended before {what}:\n{process.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


@pytest.mark.parametrize("to_group", [False, True], ids=["alone", "group"])
def test_a_killed_run_takes_its_server_and_pools_with_it_and_the_rerun_reuses_its_work(
    tmp_path: Path, prefect_database: Path, to_group: bool
) -> None:
    artifacts, home = tmp_path / "artifacts", tmp_path / "prefect"
    seed_prefect_home(prefect_database, home)
    run = _run(artifacts, PREFECT_HOME=str(home))
    _wait_for(run, lambda: any((artifacts / "shard").glob(f"*/{MANIFEST}")), "a finished shard stage")
    commands = _commands(run.pid)
    assert any("flows.ephemeral_server" in command for command in commands), commands  # Prefect's temporary server
    assert any("imgflow.runtime.lifetime" in command for command in commands), commands  # the watcher
    if to_group:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    else:
        assert survivors_of_kill(run, within=15) == {}
    assert left_behind(home, artifacts, within=15) == {}

    rerun = _run(artifacts, PREFECT_HOME=str(home))
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-3000:]
    statuses = json.loads(stdout.strip().splitlines()[-1])["stages"]
    assert [statuses[stage]["status"] for stage in STAGES[:3]] == ["cached"] * 3
    assert left_behind(home, artifacts, within=15) == {}


def test_a_run_on_a_local_dask_cluster_killed_alone_takes_the_cluster_with_it(tmp_path: Path) -> None:
    # 5,000 records: clean's two chunks go to a local Dask cluster of two worker processes (two even
    # where the run has the CPU time of one: the cluster is sized from it otherwise).
    run = _run(tmp_path / "artifacts", "--dataset", "sample:mnist5k", "--epochs", "1", IMGFLOW_TASK_RUNNER="dask",
               IMGFLOW_WORKERS="2")
    _wait_for(run, lambda: sum("spawn_main" in command for command in _commands(run.pid)) >= 2, "Dask workers")
    assert survivors_of_kill(run, within=15) == {}
