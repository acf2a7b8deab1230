"""Fetching over the network: what is worth retrying, for how long, and what to say when it is not.

A name that does not resolve, a refused connection, a TLS failure or a 4xx answer will fail the same
way a minute later: retrying them only hides the answer (TFDS's own retries times Prefect's once
spent seven minutes on a DNS failure). A timeout, a reset connection or a 5xx may pass. ``fetch``
retries only the latter, with backoff, within a time budget (``[download] timeout``), logging one
line per retry; anything else, or the budget spent, becomes one ``SourceError`` that names the
source, the host, the underlying error and the way forward, and that nothing retries again.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import TypeVar

from imgflow.runtime.errors import SourceError

T = TypeVar("T")
log = logging.getLogger(__name__)
DEFAULT_BUDGET = 60.0
# Set by the download stage from [download] timeout: a context variable, as for imgflow.runtime.progress, so
# the sources' signatures need not carry it.
_budget: ContextVar[float] = ContextVar("imgflow_fetch_budget", default=DEFAULT_BUDGET)


@contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Fetches inside this block (in this context) retry for at most ``seconds``."""
    token = _budget.set(seconds)
    try:
        yield
    finally:
        _budget.reset(token)


def budget() -> float:
    """The seconds the current fetch may keep retrying (``time_budget``)."""
    return _budget.get()


# How libraries that wrap the socket errors (pyarrow's S3 client, curl) spell the permanent ones.
_PERMANENT_TEXT = {
    "could not resolve host": "the host name does not resolve",
    "couldn't resolve host": "the host name does not resolve",
    "name or service not known": "the host name does not resolve",
    "temporary failure in name resolution": "the host name does not resolve",
    "connection refused": "the connection was refused",
    "couldn't connect to server": "the connection was refused",
    "could not connect to server": "the connection was refused",
}


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps: causes, contexts, URLError's and urllib3's ``reason``, and
    exceptions among its arguments (requests and urllib3 wrap the socket error that way)."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        linked = [current.__cause__, current.__context__, reason, *current.args]
        pending.extend(item for item in linked if isinstance(item, BaseException))


def permanent_reason(error: BaseException) -> str | None:
    """Why ``error`` will not pass on a retry, in words; None when it may (a timeout, a reset, a 5xx)."""
    for cause in _causes(error):
        if isinstance(cause, socket.gaierror):
            return f"the host name does not resolve ({cause.strerror or cause})"
        if isinstance(cause, ConnectionRefusedError):
            return "the connection was refused"
        if isinstance(cause, (FileNotFoundError, NotADirectoryError)):  # file:// URLs, local mounts
            return f"no such file ({cause.filename or cause})"
        if isinstance(cause, PermissionError):
            return f"permission denied ({cause.filename or cause})"
        if isinstance(cause, (ssl.SSLError, ssl.CertificateError)):
            return f"TLS failed ({cause})"
        if isinstance(cause, urllib.error.HTTPError):
            return f"HTTP {cause.code} {cause.reason}" if 400 <= cause.code < 500 else None
    text = str(error)
    reason = next((reason for phrase, reason in _PERMANENT_TEXT.items() if phrase in text.lower()), None)
    return None if reason is None else f"{reason} ({text})"


def describe(error: BaseException) -> str:
    """The innermost error's own words (``URLError`` hides the socket error in ``reason``)."""
    innermost = error
    for cause in _causes(error):
        if isinstance(cause, OSError) and str(cause):
            innermost = cause
    return str(innermost) or type(innermost).__name__


def fetch(action: Callable[[], T], *, source: str, host: str, advice: str) -> T:
    """``action()``, retried on errors that may pass (waiting 1, 2, 4 ... 30 s) while the time budget
    allows; otherwise a ``SourceError`` naming ``source``, ``host``, the error and ``advice``."""
    seconds = budget()
    deadline = time.monotonic() + seconds
    attempt = 1
    while True:
        try:
            return action()
        except OSError as error:  # URLError, socket and TLS errors, pyarrow's IO errors
            reason = permanent_reason(error)
            wait = min(2.0 ** (attempt - 1), 30.0)
            if reason is None and time.monotonic() + wait < deadline:
                log.warning("%s: attempt %d failed (%s); retrying in %.0f s", source, attempt, describe(error), wait)
                time.sleep(wait)
                attempt += 1
                continue
            why = reason or f"{describe(error)}, still failing after {attempt} attempt(s) in {seconds:.0f} s"
            raise SourceError(f"cannot reach {host} for {source}: {why}. {advice}") from None


def _route(url: str) -> tuple[str, int, str]:
    """The host and port a connection to ``url`` goes to first (its proxy's, where one applies), and
    how to name it in a message."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        port = via.port or 80
        return via.hostname or "", port, f"{via.hostname}:{port} (the proxy to {parts.hostname})"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "", port, parts.netloc


def _connect(host: str, port: int) -> None:
    socket.create_connection((host, port), timeout=min(10.0, budget())).close()


def check_reachable(url: str, *, source: str, advice: str) -> None:
    """Check that an ``http(s)://`` URL's host (or the proxy in between) accepts a connection, as
    ``fetch`` would retry and report it: a closed network fails in seconds, before any download."""
    host, port, name = _route(url)
    fetch(partial(_connect, host, port), source=source, host=name, advice=advice)


def first_contact(action: Callable[[], T], *, location: str, source: str) -> T:
    """``action()``, the first request to the object store holding ``location`` (``s3://bucket/...``),
    retried and reported as ``fetch`` does: an endpoint that cannot be reached fails here, at once."""
    where = urllib.parse.urlsplit(location)
    advice = (
        "Check the store's endpoint (AWS_ENDPOINT_URL, or ?endpoint_override= in the URI) and credentials "
        "(AWS_ACCESS_KEY_ID, AWS_PROFILE), or copy the table here and use parquet:PATH."
    )
    return fetch(action, source=source, host=f"{where.scheme}://{where.netloc}", advice=advice)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server or worker this process starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
