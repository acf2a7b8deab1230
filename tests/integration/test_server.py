"""`imgflow server`: a lasting Prefect server on PostgreSQL with basic auth, started, found, stopped
and started again on the same cluster; and what it refuses up front."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.heartbeats import AUTOMATION
from flows.postgres import PostgresCluster, server_programs
from flows.server import start_server
from imgflow.runtime.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def imgflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, text=True, capture_output=True, timeout=300)


def automations(api_url: str, auth: str) -> list[dict]:
    """The server's automations, as its API lists them."""
    request = urllib.request.Request(f"{api_url}/automations/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Basic {b64encode(auth.encode()).decode()}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def status(api_url: str, auth: str | None) -> int:
    """The HTTP status of a request listing work pools, with or without the credentials."""
    request = urllib.request.Request(f"{api_url}/work_pools/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", f"Basic {b64encode(auth.encode()).decode()}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as refused:
        return refused.code


@pytest.fixture
def home() -> Iterator[Path]:
    # Outside pytest's folder, which only its owner may enter (PostgreSQL runs as `postgres` under root).
    with tempfile.TemporaryDirectory(prefix="imgflow-server-") as name:
        os.chmod(name, 0o711)
        yield Path(name) / "server"
        imgflow("server", "stop", "--home", str(Path(name) / "server"))  # whatever a failed test left running


@pytest.mark.slow
def test_server_starts_on_postgres_with_auth_stops_and_starts_again(home: Path) -> None:
    try:
        server_programs()
    except UserError as missing:
        pytest.skip(str(missing))
    started = imgflow("server", "start", "--home", str(home), "--port", "0", "--heartbeat", "45")
    assert started.returncode == 0, started.stderr
    assert "on postgres" in started.stdout and "basic auth on" in started.stdout
    for pool in ("imgflow (process)", "imgflow-docker (docker)", "imgflow-kubernetes (kubernetes)"):  # what deploy/prefect.yaml names
        assert f"work pool {pool}: created" in started.stdout, started.stdout
    env = dict(line.removeprefix("export ").split("=", 1) for line in (home / "client.env").read_text().splitlines())
    assert (home / "client.env").stat().st_mode & 0o077 == 0 and (home / "server-secrets.json").stat().st_mode & 0o077 == 0
    api_url, auth = env["PREFECT_API_URL"], env["PREFECT_API_AUTH_STRING"]
    assert status(api_url, auth) == 200 and status(api_url, None) == 401 and status(api_url, "imgflow:guess") == 401
    assert (home / "postgres" / "data" / "PG_VERSION").is_file()
    # No ghost runs: its runs send heartbeats (client.env sets them), and an automation crashes a silent one.
    assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "45" and "silent for 105 s" in started.stdout
    (watch,) = [a for a in automations(api_url, auth) if a["name"] == AUTOMATION]
    assert watch["trigger"]["posture"] == "Proactive" and watch["trigger"]["within"] == 105.0
    assert watch["actions"][0]["type"] == "change-flow-run-state" and watch["actions"][0]["state"] == "CRASHED"

    again = imgflow("server", "start", "--home", str(home), "--port", "0")
    assert again.returncode == 2 and "already running" in again.stderr

    assert imgflow("server", "stop", "--home", str(home)).stdout.strip() == "stopped"
    assert imgflow("server", "status", "--home", str(home)).returncode == 3
    assert not PostgresCluster(home / "postgres", 0).running()  # the database stopped too

    # Started again: the same cluster (its data kept) and the same credentials, so client.env stays valid.
    restarted = imgflow("server", "start", "--home", str(home), "--port", "0")
    assert restarted.returncode == 0, restarted.stderr
    assert "work pool imgflow-docker (docker): exists" in restarted.stdout, restarted.stdout  # kept as it was
    env = dict(line.removeprefix("export ").split("=", 1) for line in (home / "client.env").read_text().splitlines())
    assert env["PREFECT_API_AUTH_STRING"] == auth and status(env["PREFECT_API_URL"], auth) == 200
    running = imgflow("server", "status", "--home", str(home))
    assert running.returncode == 0 and "on postgres" in running.stdout
    assert [a["trigger"]["within"] for a in automations(env["PREFECT_API_URL"], auth) if a["name"] == AUTOMATION] == [135.0]  # made again
    assert imgflow("server", "stop", "--home", str(home)).returncode == 0


def test_an_open_server_beyond_this_machine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="without auth would let anyone"):
        start_server(tmp_path, host="0.0.0.0", auth=False)
    assert not (tmp_path / "server.json").exists()


def test_missing_postgres_programs_are_named_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGFLOW_PG_BIN", str(tmp_path))
    with pytest.raises(UserError, match=r"not found in IMGFLOW_PG_BIN=.*apt-get install postgresql.*--database sqlite"):
        server_programs()


@pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as `postgres` only when started by root")
def test_a_folder_postgres_cannot_reach_is_refused_before_initdb(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(UserError, match=rf"{closed} is not searchable by it.*chmod o\+x {closed}"):
        PostgresCluster(closed / "server" / "postgres", 5999).start("secret")
    assert not (closed / "server" / "postgres" / "data").exists()
