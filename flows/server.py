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

``prefect_server()`` starts a real ``prefect server start`` (with the UI, as a user would run it),
for the deployment tests and benchmarks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imgflow.store import file_lock
from imgflow.testing import free_port


class TemporaryAPI:
    """The API a command's flow run talks to (see the module docstring). Made as early as the command
    knows it will run a flow: a temporary server then starts in the background (most of its ~3.5 s is
    the server process importing Prefect's server and checking its database) while the command goes
    on importing the flow and TensorFlow; ``serving()`` waits for it.

    The server process is the one Prefect's ``SubprocessASGIServer`` runs (uvicorn serving
    ``prefect.server.api.server:create_app`` as an ephemeral server: no UI, no scheduling services),
    started here without importing Prefect's server modules into this process: that import alone
    takes ~3 s of the command's critical path, for one class."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self.api_url = ""
        self._failure: BaseException | None = None
        # Read from the environment, not Prefect's settings: importing those takes ~0.8 s, and the
        # server starts before that unless the environment names a server already.
        self._home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
        self._timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20"))
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
        except BaseException as failure:  # raised again by serving(), in the command's thread
            self._failure = failure

    def _serve(self) -> None:
        deadline = time.monotonic() + self._timeout
        while True:
            port = free_port()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
                env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"},
            )
            self.api_url = f"http://127.0.0.1:{port}/api"
            if _healthy(self.api_url, self._process, deadline):
                return
            # 3: uvicorn could not bind the port (taken since free_port chose it): try another.
            if self._process.returncode != 3 or time.monotonic() > deadline:
                raise RuntimeError(
                    f"Prefect's temporary server did not start within {self._timeout:.0f} s "
                    f"(exit status {self._process.returncode}; its errors are above)"
                )

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
            self._starting.join()
            if self._failure is not None:
                raise self._failure
            # No flow-run heartbeats: they let a lasting server notice a run that died, and this server
            # dies with the run. Their thread sleeps in 1 s steps and is joined as the flow ends (up to
            # 1 s of every run spent waiting for it).
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


def _healthy(api_url: str, process: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait until the server at ``api_url`` answers its health check (True), its process exits or the
    deadline passes (False)."""
    while process.poll() is None:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
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


@contextmanager
def prefect_server(home: Path, timeout: float = 120) -> Iterator[str]:
    """A real ``prefect server start`` on 127.0.0.1 and a free port, with its own ``PREFECT_HOME``
    (database included); yields its API URL. Its log is ``home/server.log``."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log_path = home / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}/api"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=2).read()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"prefect server did not start: {log_path.read_text()[-3000:]}") from None
                    time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)
