"""An artifact root on object storage (``s3://bucket/prefix``), and the lease that makes it safe to share.

The artifact store keeps a root like this one as the truth and works through a local mirror of it
(``IMGFLOW_CACHE``, default ``~/.cache/imgflow/<hash of the root>``): TensorFlow, the stages and the
registry read and write local files, and the store moves complete outputs between the two. This
module is the remote half: plain object operations over a pyarrow filesystem (any URI that
``pyarrow.fs.FileSystem.from_uri`` knows: ``s3://``, ``gs://``, ``hdfs://``...), and a lease that
reaches across machines.

**The lease** (``ObjectRoot.lease``) is one small object, created with a conditional write (S3's
``If-None-Match: *``, which AWS S3, MinIO and moto honour): exactly one creator succeeds. Its holder
rewrites it every third of ``IMGFLOW_LEASE_SECONDS`` (default 30) with ``If-Match`` on the version it
wrote last, so the object keeps changing while the holder lives. A waiter polls it; if the object has
not changed for a whole lease period, by the waiter's own clock (so the machines' clocks never need to
agree), the holder is gone, and the waiter takes the lease over with one more conditional write, which
only one waiter can win. The holder lets go by deleting it (conditionally: only its own version). A
holder that loses its lease (it stalled for longer than the lease period) learns it on its next renewal
and the store refuses to publish under a lease it no longer holds.

Conditional writes go through boto3 (pyarrow's filesystems have none), so leases exist for ``s3://``
roots; another scheme works for a single writer and refuses to take a lease, saying so.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from imgflow.runtime.errors import ConfigError

CACHE = "IMGFLOW_CACHE"
LEASE_SECONDS = "IMGFLOW_LEASE_SECONDS"
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://")
_COPY_BLOCK = 8 << 20
_TRANSFERS = 8  # files moved at once


def is_remote(root: str | Path) -> bool:
    """Whether ``root`` names an object-store root (a URI other than ``file://``) rather than a folder."""
    found = _SCHEME.match(str(root))
    return found is not None and found.group(1) != "file"


def cache_root() -> Path:
    """This machine's cache folder: ``IMGFLOW_CACHE``, default ``~/.cache/imgflow`` (mirrors of object-store
    roots, imported weights, the speed probe's measurements)."""
    return Path(os.environ.get(CACHE) or Path.home() / ".cache" / "imgflow").expanduser()


def mirror_dir(uri: str) -> Path:
    """The local folder that mirrors the root ``uri``: under ``cache_root()``, one sub-folder per root."""
    base = cache_root()
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", uri.split("://", 1)[1]).strip("-")[-40:]
    return (base / f"{tail}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}").resolve()


class LeaseLost(RuntimeError):
    """The lease expired while its holder was still working: someone else may now hold it."""


class ObjectRoot:
    """The objects under one root URI: read, write, copy folders in and out, lease."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        try:
            self.fs, self.base = pafs.FileSystem.from_uri(self.uri)
        except (OSError, ValueError) as exc:  # pyarrow: ArrowInvalid (a ValueError) for a URI it cannot read
            raise ConfigError(f"artifact root {uri}: {exc}") from None
        self.base = self.base.rstrip("/")

    def path(self, relative: str) -> str:
        """The filesystem path of ``relative`` (what pyarrow's filesystem takes)."""
        return f"{self.base}/{relative}" if relative else self.base

    def url(self, relative: str) -> str:
        """The full URI of ``relative``, for pyarrow readers and writers elsewhere (Dask workers)."""
        return f"{self.uri}/{relative}"

    def link(self, relative: str, seconds: int = 7 * 24 * 3600) -> str:
        """An address a browser on another machine can open: on ``s3://`` a presigned GET (signed here
        with the run's credentials, valid for ``seconds``, a week at most), elsewhere the object's URI."""
        if not self.uri.startswith("s3://"):
            return self.url(relative)
        bucket, _, key = self.path(relative).partition("/")
        return str(s3_client().generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds))

    def read_bytes(self, relative: str) -> bytes | None:
        """The object's bytes, or None when there is no such object. On ``s3://`` one GET, so the
        bytes are one version of an object another machine may be replacing: pyarrow asks for the
        size first, then reads that many bytes, which tears such a read (an old size with new bytes). Other schemes have a single writer (see ``Lease``)."""
        if self.uri.startswith("s3://"):
            from botocore.exceptions import ClientError

            bucket, _, key = self.path(relative).partition("/")
            try:
                return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response["Error"]["Code"] in ("NoSuchKey", "404", "NotFound"):
                    return None
                raise
        try:
            with self.fs.open_input_stream(self.path(relative)) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def write_bytes(self, relative: str, data: bytes) -> None:
        with self.fs.open_output_stream(self.path(relative)) as stream:
            stream.write(data)

    def delete(self, relative: str) -> None:
        """Remove one object, if it is there."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(relative))

    def files(self, relative: str) -> list[str]:
        """Every object under the folder ``relative``, as paths relative to it (sorted)."""
        return [name for name, _, _ in self.listing(relative)]

    def listing(self, relative: str) -> list[tuple[str, int, float]]:
        """(path relative to the folder ``relative``, bytes, modified: seconds since the epoch) of every
        object under it, sorted by path."""
        prefix = self.path(relative)
        selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
        return sorted(
            (info.path[len(prefix) + 1 :], info.size, info.mtime.timestamp() if info.mtime else 0.0)
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        )

    def download(self, relative: str, names: Mapping[str, Mapping[str, Any]] | list[str], into: Path) -> None:
        """Copy the objects ``names`` of folder ``relative`` into the local folder ``into``. With a file
        table (name -> {"sha256", "bytes"}, as in a manifest) every copy is checked against it."""

        def fetch(name: str) -> None:
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            digest, size = hashlib.sha256(), 0
            with self.fs.open_input_stream(self.path(f"{relative}/{name}")) as stream, open(target, "wb") as out:
                while block := stream.read(_COPY_BLOCK):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
            expected = names.get(name) if isinstance(names, Mapping) else None
            if expected is not None and (digest.hexdigest(), size) != (expected["sha256"], expected["bytes"]):
                raise OSError(
                    f"{self.url(f'{relative}/{name}')} does not match its manifest (sha256 or size): "
                    "it was changed or is being rewritten; run again"
                )

        with ThreadPoolExecutor(_TRANSFERS) as pool:
            list(pool.map(fetch, list(names)))

    def upload(self, folder: Path, names: list[str], relative: str) -> None:
        """Copy the files ``names`` of the local ``folder`` to the folder ``relative`` of this root."""

        def put(name: str) -> None:
            with open(folder / name, "rb") as source, self.fs.open_output_stream(self.path(f"{relative}/{name}")) as out:
                while block := source.read(_COPY_BLOCK):
                    out.write(block)

        with ThreadPoolExecutor(_TRANSFERS) as pool:
            list(pool.map(put, names))

    @contextlib.contextmanager
    def lease(self, relative: str) -> Iterator[Lease]:
        """Hold the lease object ``relative`` (see the module docstring); wait while another holds it."""
        lease = Lease(self, relative)
        lease.acquire()
        try:
            yield lease
        finally:
            lease.release()


@functools.cache
def s3_client() -> Any:
    """This process's boto3 S3 client (thread-safe), for what pyarrow's filesystems cannot do:
    conditional writes and single-request reads. Endpoint and credentials from the ``AWS_*`` variables."""
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def lease_seconds() -> float:
    value = os.environ.get(LEASE_SECONDS, "30")
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ConfigError(f"{LEASE_SECONDS}={value!r}: expected a number of seconds above 0")
    return seconds


class Lease:
    """One held lease object (see the module docstring): acquired, renewed by a thread, released."""

    def __init__(self, root: ObjectRoot, relative: str) -> None:
        if not root.uri.startswith("s3://"):
            raise ConfigError(
                f"artifact root {root.uri}: two runs can share only a local or an s3:// root "
                "(its lock is an S3 conditional write); run one writer at a time on this one"
            )
        bucket, _, prefix = root.uri[len("s3://") :].partition("/")
        self.client = s3_client()
        self.bucket, self.key = bucket, f"{prefix}/{relative}".lstrip("/")
        self.seconds = lease_seconds()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.etag: str | None = None
        self.lost = False
        self.error: Exception | None = None  # the last failed renewal's error, for LeaseLost's message
        self._beats = 0
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        self._beats += 1  # a new body each time, so the object's ETag changes while we live
        return json.dumps({"holder": self.holder, "beat": self._beats, "seconds": self.seconds}).encode()

    def _put(self, **condition: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), **condition)["ETag"]
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise

    def _current(self) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.key)["ETag"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def acquire(self) -> None:
        seen: tuple[str, float] | None = None  # the holder's last version, and when we first saw it
        while not self._put(IfNoneMatch="*"):
            etag = self._current()
            if etag is None:
                continue  # released in between: try again at once
            now = time.monotonic()
            if seen is None or seen[0] != etag:
                seen = (etag, now)
            elif now - seen[1] > self.seconds and self._put(IfMatch=etag):
                break  # its holder stopped renewing a whole period ago: taken over
            time.sleep(min(0.5, self.seconds / 4))
        self._renewer = threading.Thread(target=self._renew, name=f"lease {self.key}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        """Every third of a lease period. A renewal that fails on the network is tried again at the
        next tick; once none has succeeded for a whole period, a waiter may have taken over: lost."""
        renewed = time.monotonic()
        while not self._stop.wait(self.seconds / 3):
            assert self.etag is not None
            try:
                if not self._put(IfMatch=self.etag):
                    self.lost = True  # someone else holds it now
                    return
                renewed = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - transient (connection, throttling): the next tick retries
                self.error = exc
                if time.monotonic() - renewed > self.seconds:
                    self.lost = True
                    return

    def check(self) -> None:
        """Raise ``LeaseLost`` if the lease is no longer ours."""
        if self.lost:
            why = f"renewals failed: {self.error}" if self.error else f"stalled longer than {self.seconds:g} s?"
            raise LeaseLost(f"lost the lease s3://{self.bucket}/{self.key} ({why}): not publishing")

    def release(self) -> None:
        from botocore.exceptions import ClientError

        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.lost or self.etag is None:
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("PreconditionFailed", "404", "NoSuchKey"):
                raise
