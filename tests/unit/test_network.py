"""imgflow.runtime.network against real failures: a name under .invalid (never resolves), a closed local
port, and a local HTTP server that answers 503 before it answers."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgflow.runtime.errors import SourceError
from imgflow.runtime.network import fetch, permanent_reason, time_budget
from imgflow.data.sources import open_source
from imgflow.runtime.network import free_port
from tests.conftest import digit_like, encode


def _error_of(call) -> BaseException:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test looks at whatever it raised
        return exc
    raise AssertionError("no error")


def test_what_will_not_pass_is_told_from_what_may() -> None:
    closed = free_port()
    unresolvable = _error_of(lambda: urllib.request.urlopen("http://imgflow-test.invalid/x", timeout=10))
    refused = _error_of(lambda: urllib.request.urlopen(f"http://127.0.0.1:{closed}/x", timeout=10))
    assert "does not resolve" in permanent_reason(unresolvable)
    assert permanent_reason(refused) == "the connection was refused"
    assert "does not resolve" in permanent_reason(_error_of(lambda: socket.getaddrinfo("imgflow-test.invalid", 80)))
    assert permanent_reason(urllib.error.HTTPError("http://h/x", 404, "Not Found", {}, None)) == "HTTP 404 Not Found"
    assert permanent_reason(urllib.error.HTTPError("http://h/x", 503, "Unavailable", {}, None)) is None
    assert permanent_reason(TimeoutError("timed out")) is None
    assert permanent_reason(OSError("AWS Error NETWORK_CONNECTION: curlCode: 6, Couldn't resolve host name")) is not None


def test_a_permanent_failure_is_not_retried_and_a_lasting_one_stops_at_the_budget() -> None:
    calls = []

    def refused() -> None:
        calls.append(1)
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(SourceError, match=r"cannot reach h:1 for src: the connection was refused\. try X"):
        fetch(refused, source="src", host="h:1", advice="try X")
    assert len(calls) == 1

    def slow() -> None:
        calls.append(1)
        raise TimeoutError("timed out")

    started = time.monotonic()
    with time_budget(2.5), pytest.raises(SourceError, match=r"timed out, still failing after 2 attempt\(s\) in 2 s"):
        fetch(slow, source="src", host="h:1", advice="try X")  # waits 1 s, then 2 s would pass the budget
    assert len(calls) == 3 and time.monotonic() - started < 2.5


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first request for a path, then the file."""

    body = b""
    seen: set[str] = set()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path not in self.seen:
            self.seen.add(self.path)
            self.send_error(503, "try again")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_server(tmp_path: Path) -> Iterator[str]:
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for index in range(4):
            out.writestr(f"{'ab'[index % 2]}/{index}.png", encode(digit_like(index)))
    _Flaky.body, _Flaky.seen = archive.read_bytes(), set()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/d.zip#sha256={hashlib.sha256(_Flaky.body).hexdigest()}"
    finally:
        server.shutdown()


def test_an_archive_url_answering_503_once_is_fetched_on_the_retry(flaky_server: str) -> None:
    assert len(list(open_source(f"archive:{flaky_server}").records())) == 4


@pytest.mark.parametrize(
    ("host", "reason"), [("imgflow-test.invalid", "does not resolve"), ("127.0.0.1:{port}", "the connection was refused")]
)
def test_an_archive_url_that_cannot_be_reached_fails_at_once_saying_what_to_do(host: str, reason: str) -> None:
    host = host.format(port=free_port())
    started = time.monotonic()
    with pytest.raises(SourceError) as raised:
        list(open_source(f"archive:http://{host}/d.zip#sha256={'0' * 64}").records())
    message = str(raised.value)
    assert f"cannot reach {host} for archive:http://{host}/d.zip" in message and reason in message
    assert f"archive:PATH#sha256={'0' * 64}" in message  # the way forward
    assert time.monotonic() - started < 10


def test_an_object_store_that_cannot_be_reached_fails_at_once_saying_what_to_check() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(SourceError) as raised:
        open_source(f"parquet:s3://bucket/table?endpoint_override=127.0.0.1:{port}&scheme=http")
    message = str(raised.value)
    assert message.startswith("cannot reach s3://bucket for parquet:s3://bucket/table") and "the connection was refused" in message
    assert f"127.0.0.1:{port}" in message and "AWS_ENDPOINT_URL" in message
    assert time.monotonic() - started < 20
