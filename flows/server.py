"""The Prefect server a run talks to: the configured one, or a temporary one for one command.

``TemporaryAPI`` is what ``imgflow run`` (and every other command that runs a flow) stands in:
with ``PREFECT_API_URL`` set it uses that server; without, it starts Prefect's temporary server
(the server process of ``SubprocessASGIServer``, which Prefect itself would start on first use) on a
free local port, points this process at it, and at the end sends the logs and events still queued
before stopping it.
Runs started at once on one machine share ``PREFECT_HOME``'s database: their servers start one at a
time, since two servers migrating a new database together collide ("duplicate column name").
Doing that ourselves, rather than leaving the server to Prefect's exit hooks, keeps its farewell lines
before our last line of output (``--json`` really ends with the JSON line).

``start_server`` / ``stop_server`` run a lasting ``prefect server start`` (with the UI) for workers
and deployments (``imgflow server start``): on SQLite or on a PostgreSQL cluster of its own, with
basic auth, on 127.0.0.1 unless told otherwise, crashing runs whose heartbeats stop
(``flows.heartbeats``). ``prefect_server()`` is one for the duration of a
block, for the deployment tests and benchmarks.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.heartbeats import HEARTBEAT, MINIMUM_HEARTBEAT, watch_heartbeats
from flows.postgres import PostgresCluster, new_password
from imgflow.runtime.errors import ConfigError, MachineError, UserError
from imgflow.runtime.lifetime import descendants, running, start_child, start_time, stop
from imgflow.runtime.network import free_port
from imgflow.store.files import file_lock

DATABASES = ("sqlite", "postgres")
TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STARTUP_CEILING = 180.0  # seconds; see startup_timeout
NOTICE_AFTER = 5.0  # seconds of waiting for the temporary server before the command says so


class TemporaryAPI:
    """The API a command's flow run talks to (see the module docstring). Made as early as the command
    knows it will run a flow: a temporary server then starts in the background (most of its start is
    the server process importing Prefect's server and checking its database) while the command goes
    on importing the flow and TensorFlow; ``serving()`` waits for it.

    The server process is the one Prefect's ``SubprocessASGIServer`` runs (uvicorn serving
    ``prefect.server.api.server:create_app`` as an ephemeral server: no UI, no scheduling services),
    through ``flows.ephemeral_server`` (its imports without full garbage collections), started here
    without importing Prefect's server modules into this process: that import alone would be most of
    the command's critical path, for one class."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self.api_url = ""
        self._failure: BaseException | None = None
        # Read from the environment, not Prefect's settings: importing those is slow, and the
        # server starts before that unless the environment names a server already.
        self._home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
        self._timeout = startup_timeout()
        self._began = time.monotonic()
        self._starting = threading.Thread(target=self._start, name="prefect server start", daemon=True)
        if not os.environ.get("PREFECT_API_URL"):
            self._starting.start()
        from prefect.settings import get_current_settings

        # A server named elsewhere (a profile, prefect.toml) is used instead; one started meanwhile is
        # stopped after the run.
        self.configured = get_current_settings().api.url

    def _start(self) -> None:
        self._home.mkdir(parents=True, exist_ok=True)
        try:
            with file_lock(self._home / ".imgflow-server-start.lock"):
                self._serve()  # its database is migrated when this returns
        except BaseException as failure:  # noqa: BLE001 - raised again by serving(), in the command's thread
            self._failure = failure

    def _serve(self) -> None:
        deadline = self._began + self._timeout
        while True:
            port = free_port()
            self._process = start_child(
                [
                    sys.executable,
                    "-m",
                    "flows.ephemeral_server",
                    "--factory",
                    "prefect.server.api.server:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-level",
                    "error",
                    "--lifespan",
                    "on",
                ],
                env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"},
                # In a session of its own: a Ctrl-C or `timeout` signals the command's whole process group, and
                # the run must still record its final state here as it stops (it stops this server itself).
                # Out of the group, a SIGKILL to the group misses it too: it dies with this process (start_child).
                start_new_session=True,
            )
            self.api_url = f"http://127.0.0.1:{port}/api"
            if _healthy(self.api_url, self._process, deadline):
                return
            # 3: uvicorn could not bind the port (taken since free_port chose it): try another.
            if self._process.returncode != 3 or time.monotonic() > deadline:
                raise MachineError(_did_not_start(self._timeout, self._process.returncode, self._home))

    @contextmanager
    def serving(self) -> Iterator[str]:
        """The API URL, for the duration of the block; a temporary server is stopped after it, once
        the logs and events still queued are sent."""
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
        from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        if self.configured:
            try:
                yield self.configured
            finally:
                if self._starting.ident is not None:  # started before the settings named a server
                    self._starting.join()
                    self._stop()
            return
        try:
            self._starting.join(timeout=max(0.0, self._began + NOTICE_AFTER - time.monotonic()))
            if self._starting.is_alive():
                print(
                    f"imgflow: starting Prefect's local server (its first start creates its database in {self._home}); "
                    f"waiting up to {self._timeout:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                self._starting.join()
            if self._failure is not None:
                raise self._failure
            # No flow-run heartbeats: they let a lasting server notice a run that died, and this server
            # dies with the run. Their thread sleeps in 1 s steps and is joined as the flow ends: every
            # run would wait for it.
            with temporary_settings({PREFECT_API_URL: self.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                try:
                    yield self.api_url
                finally:
                    APILogWorker.drain_all(timeout=30)
                    EventsWorker.drain_all(timeout=30)
        finally:
            self._stop()

    def _stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def startup_timeout() -> float:
    """How long a command waits for Prefect's temporary server: Prefect's own setting when the
    environment sets it, else ``STARTUP_CEILING``. Prefect's default of 20 s assumes a fast machine: a
    first start under a CPU quota (creating and migrating its SQLite database) can take a minute or
    more. The wait ends as soon as the server answers, or its process exits."""
    value = os.environ.get(TIMEOUT_SETTING)
    if value is None:
        return STARTUP_CEILING
    if not value.strip().isdigit() or int(value) < 1:  # Prefect's own settings take whole seconds
        raise ConfigError(f"{TIMEOUT_SETTING}={value!r}: expected a whole number of seconds, 1 or more")
    return float(value)


def _did_not_start(timeout: float, status: int | None, home: Path) -> str:
    """The one paragraph a command ends with when the temporary server never answered."""
    what = "its process was still starting" if status in (None, -15) else f"its process exited with status {status}; its errors are above"
    return (
        f"Prefect's temporary server did not answer within {timeout:.0f} s ({what}). The machine may be too "
        f"slow or too CPU-limited to start it in time (its first start creates its database in {home}), or "
        f"something there stops it. Either wait longer: {TIMEOUT_SETTING}={max(600, int(timeout * 3))} "
        "imgflow ...; or run against a lasting server: `imgflow server start`, then set PREFECT_API_URL to the "
        "URL it prints."
    )


def _healthy(api_url: str, process: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait until the server at ``api_url`` answers (True), its process exits or the deadline passes
    (False). It is asked for its version, the first thing a Prefect client asks: a server's first
    answer on a route is slower than the next ones (/health is quick from the start), and the
    command's flow would wait for it to start."""
    while process.poll() is None:
        try:
            with urllib.request.urlopen(f"{api_url}/admin/version", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.terminate()
            process.wait()
            return False
        time.sleep(0.05)
    return False


@dataclass(frozen=True)
class RunningServer:
    """A lasting Prefect server: its API URL and the credentials a client sends (None: no auth)."""

    api_url: str
    auth: str | None
    database: str
    pid: int
    heartbeat: int = HEARTBEAT  # seconds between a flow run's heartbeats, what the server's automation expects

    def client_env(self) -> dict[str, str]:
        """What a client or worker needs in its environment to use this server: its address, its
        credentials, and the heartbeat its runs send (``flows.heartbeats``)."""
        auth = {"PREFECT_API_AUTH_STRING": self.auth} if self.auth else {}
        return {"PREFECT_API_URL": self.api_url, **auth, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(self.heartbeat)}


def start_server(
    home: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    database: str = "sqlite",
    auth: bool = True,
    timeout: float | None = None,
    heartbeat: int = HEARTBEAT,
) -> RunningServer:
    """Start ``prefect server start`` (with its UI) in the background and return once it answers.

    ``home`` is the server's own folder: its ``PREFECT_HOME`` (the SQLite database, with ``database=
    "sqlite"``), the PostgreSQL cluster in ``home/postgres`` (``database="postgres"``), the log
    ``home/server.log``, its secrets (``server-secrets.json``, only its owner reads it: the API's basic
    auth string and the database role's password, made once) and ``server.json`` (what ``stop_server``
    stops). ``port=0`` takes a free one. With ``auth`` the API answers only clients sending
    ``PREFECT_API_AUTH_STRING`` (its health check excepted); ``client.env`` holds the lines a client
    sources. Serving beyond 127.0.0.1 without auth is refused: anyone reaching the API can run code
    on the workers. Its runs send a heartbeat every ``heartbeat`` seconds (at least 30, Prefect's least),
    and a run silent for two of them is marked Crashed (``flows.heartbeats``)."""
    if database not in DATABASES:
        raise UserError(f"--database must be one of {', '.join(DATABASES)}, not {database!r}")
    if heartbeat < MINIMUM_HEARTBEAT:
        raise UserError(f"--heartbeat must be at least {MINIMUM_HEARTBEAT} seconds (Prefect's least), not {heartbeat}")
    if not auth and host not in ("127.0.0.1", "localhost", "::1"):
        raise UserError(f"a server on {host} without auth would let anyone who reaches it run code on your workers: keep auth on")
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    already = server_state(home)
    if already is not None:
        raise UserError(
            f"a Prefect server started from {home} is already running ({already.api_url}, pid {already.pid}): "
            f"imgflow server stop --home {home} first"
        )
    secrets = _secrets(home)
    port = port or free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(name, None)
    state: dict[str, Any] = {"database": database, "auth": auth, "heartbeat": heartbeat}
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = secrets["auth"]
    if database == "postgres":
        cluster = PostgresCluster(home / "postgres", free_port())
        state["postgres_port"] = cluster.port
        _write_private(home / "server.json", json.dumps(state, indent=1))  # stop_server stops what started
        try:
            cluster.start(secrets["postgres"])
        except BaseException:
            stop_server(home)
            raise
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = cluster.url(secrets["postgres"])
    connect = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    api_url = f"http://{connect}:{port}/api"
    # Where the UI's pages send their API calls: this server (Prefect's default assumes port 4200).
    # Served to other machines, set PREFECT_UI_API_URL to the address their browsers use.
    env.setdefault("PREFECT_UI_API_URL", api_url)
    log_path = home / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=home,
        )
    state.update(pid=server.pid, started=start_time(server.pid), api_url=api_url)
    _write_private(home / "server.json", json.dumps(state, indent=1))
    started = RunningServer(api_url, secrets["auth"] if auth else None, database, server.pid, heartbeat)
    timeout = startup_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{api_url}/health", timeout=2).read()
            break
        except OSError:
            if server.poll() is not None:
                stop_server(home)
                raise UserError(f"prefect server did not start: {log_path.read_text()[-3000:]}") from None
            if time.monotonic() > deadline:
                stop_server(home)
                raise MachineError(
                    f"prefect server did not answer within {timeout:.0f} s: the machine may be too slow or too "
                    f"CPU-limited to start it in time; set {TIMEOUT_SETTING} to wait longer. Its log ({log_path}) "
                    f"ends: {log_path.read_text()[-1500:]}"
                ) from None
            time.sleep(0.5)
    try:
        watch_heartbeats(started, heartbeat)
    except BaseException:
        stop_server(home)
        raise
    _write_private(home / "client.env", "".join(f"export {key}={shlex.quote(value)}\n" for key, value in started.client_env().items()))
    return started


def server_state(home: Path) -> RunningServer | None:
    """The server started from ``home`` if it is still running, else None."""
    try:
        state = json.loads((home / "server.json").read_text())
    except FileNotFoundError:
        return None
    if not _processes(state):
        return None
    auth = _secrets(home)["auth"] if state["auth"] else None
    return RunningServer(state["api_url"], auth, state["database"], state["pid"], state.get("heartbeat", HEARTBEAT))


def stop_server(home: Path, timeout: float = 30) -> bool:
    """Stop the server started from ``home`` (and its PostgreSQL cluster); False when none was running."""
    home = home.resolve()
    try:
        state = json.loads((home / "server.json").read_text())
    except FileNotFoundError:
        return False
    processes = _processes(state)
    stop({**processes, **descendants(processes)}, grace=timeout)
    if "postgres_port" in state:
        PostgresCluster(home / "postgres", state["postgres_port"]).stop()
    (home / "server.json").unlink()
    return bool(processes)


def _processes(state: dict[str, Any]) -> dict[int, int]:
    """The server's process, if it still runs (pid and start time: not a later process given its pid)."""
    return running({state["pid"]: state["started"]}) if state.get("started") is not None else {}


@contextmanager
def prefect_server(
    home: Path, *, database: str = "sqlite", auth: bool = False, timeout: float | None = None, heartbeat: int = HEARTBEAT
) -> Iterator[RunningServer]:
    """A real ``prefect server start`` on 127.0.0.1 and a free port for the block (``start_server``),
    for the deployment tests and benchmarks."""
    server = start_server(home, database=database, auth=auth, timeout=timeout, heartbeat=heartbeat)
    try:
        yield server
    finally:
        stop_server(home)


def _secrets(home: Path) -> dict[str, str]:
    """The server's secrets, made on first use and kept (a client's ``client.env`` stays valid)."""
    path = home / "server-secrets.json"
    if not path.exists():
        _write_private(path, json.dumps({"auth": f"imgflow:{new_password()}", "postgres": new_password()}))
    return json.loads(path.read_text())


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, whole or not at all."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(temporary, path)
