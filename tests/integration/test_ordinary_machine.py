"""The first run on an ordinary machine: a container with a CPU limit, where the process sees every
core but gets a fraction of one, and a new user's empty ``PREFECT_HOME`` (Prefect's temporary server
creates its database on the first start). It must pass the first time, with every pool sized to the
quota."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgflow.runtime.quota import QuotaUnavailable, cpu_quota


@pytest.mark.slow
def test_the_first_run_under_a_cpu_quota_with_a_new_prefect_home_passes(tmp_path: Path) -> None:
    """Slow by nature (60-90 s): the subject is a whole first run in 0.4 of a CPU, Prefect's new database
    migrated and TensorFlow imported within that quota; shared state would skip what it tests."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("PREFECT_", "TF_NUM_", "IMGFLOW_"))}
    env.update(PREFECT_HOME=str(tmp_path / "new-prefect-home"), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "flows.cli", "run", "--artifacts", str(tmp_path / "artifacts"),
               "--epochs", "2", "--min-accuracy", "0", "--json"]
    try:
        with cpu_quota(0.4) as enter:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200, preexec_fn=enter, check=False)
    except QuotaUnavailable as why:
        pytest.skip(f"no CPU quota can be set here: {why}")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["decision"] == "promoted"
    assert summary["cpus"]["cores"] == pytest.approx(0.4) and summary["cpus"]["threads"] == 1
    assert "quota 0.4" in summary["cpus"]["source"]
    assert "1 CPU thread (cgroup CPU quota 0.4" in done.stdout + done.stderr  # the training plan said so
    assert "bug in imgflow" not in done.stderr


def test_a_server_that_never_answers_in_time_is_the_machines_fault_and_says_what_to_do(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--artifacts", str(tmp_path / "artifacts")],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("imgflow: error: Prefect's temporary server did not answer within 1 s"), last
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=600" in last and "imgflow server start" in last
    assert "bug in imgflow" not in done.stderr and "Traceback" not in done.stderr


def test_the_servers_wait_is_prefects_setting_or_a_generous_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.server import STARTUP_CEILING, startup_timeout
    from imgflow.runtime.errors import ConfigError

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    assert startup_timeout() == STARTUP_CEILING >= 120
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "45")
    assert startup_timeout() == 45
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "soon")
    with pytest.raises(ConfigError, match="expected a whole number of seconds, 1 or more"):
        startup_timeout()
