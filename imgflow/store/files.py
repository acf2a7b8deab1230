"""Files and folders written so that a reader sees the old one or the new one, never half of one; locks across
processes; and the sha256 table of a folder that manifests and model cards record."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgflow.store.fingerprint import sha256_file, to_jsonable


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old one or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    write_bytes_atomic(path, (json.dumps(to_jsonable(data), indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes; the kernel drops it if the holder dies."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_table(folder: Path, skip: str | None = None) -> dict[str, dict[str, Any]]:
    """Every file under ``folder`` (but ``skip``) by relative path: its sha256 and size, as manifests and
    model cards record them."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != skip:
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def swap_in(tmp: Path, final: Path) -> None:
    """Rename the complete folder ``tmp`` to ``final``, replacing what is there (a forced rebuild, a
    stale mirror, or debris without a manifest: only complete folders are renamed into place)."""
    if final.exists():
        retired = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.rename(final, retired)
        shutil.rmtree(retired, ignore_errors=True)
    os.rename(tmp, final)
