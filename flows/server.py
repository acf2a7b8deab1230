"""The Prefect server a run talks to: the configured one, or a temporary one for one command.

``temporary_api()`` is what ``imgflow run`` (and every other command that runs a flow) stands in:
with ``PREFECT_API_URL`` set it uses that server; without, it starts Prefect's temporary server
(``SubprocessASGIServer``, the one Prefect itself would start on first use) on a free local port,
points this process at it, and at the end sends the logs and events still queued before stopping it.
Runs started at once on one machine share ``PREFECT_HOME``'s database: their servers start one at a
time, since two servers migrating a new database together collide ("duplicate column name").
Doing that ourselves, rather than leaving the server to Prefect's exit hooks, keeps its farewell lines
before our last line of output (``--json`` really ends with the JSON line) and uses only public API.

``prefect_server()`` starts a real ``prefect server start`` (with the UI, as a user would run it),
for the deployment tests and benchmarks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imgflow.store import file_lock
from imgflow.testing import free_port


@contextmanager
def temporary_api() -> Iterator[str]:
    """The API URL this process talks to for the duration of the block (see the module docstring)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    configured = get_current_settings().api.url
    if configured:
        yield configured
        return
    server = SubprocessASGIServer(port=free_port())
    home = Path(get_current_settings().home)
    home.mkdir(parents=True, exist_ok=True)
    with file_lock(home / ".imgflow-server-start.lock"):
        server.start()  # its database is migrated when this returns
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                APILogWorker.drain_all(timeout=30)
                EventsWorker.drain_all(timeout=30)
    finally:
        server.stop()


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
