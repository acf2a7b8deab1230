"""Stored outputs checked against their manifests before they are trusted, as restic and DVC check content.

Every manifest lists each file's sha256 and size (``imgflow.store.artifacts``). ``damage`` compares a folder with
its list: a missing file, another size, another hash. Re-hashing a large table on every lookup would
cost a warm rerun its speed, so a file verified once is recorded by inode, size, modification and change time
(``<stage>/.verified-<key>.json``) and only re-hashed when one of those changes; ``imgflow verify``
re-hashes everything regardless. A damaged output is moved aside (``<stage>/.corrupt/<key>-<time>/``
with ``DAMAGE.txt`` saying what was wrong), never deleted, so its key reads as "not built" and is rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imgflow.store.files import write_json_atomic
from imgflow.store.fingerprint import sha256_file

CORRUPT = ".corrupt"
DAMAGE_NOTE = "DAMAGE.txt"
# A cache a stage keeps beside its outputs (the train stage's frozen features: ``<stage>/.features/<key>/``),
# sealed file by file: ``<stem>.sha256.json`` holds its files' table as a manifest does (``seal``).
SEALED_CACHE = ".features"
SEAL = ".sha256.json"


def _stamp(path: Path) -> list[int]:
    """What changes when a file is written, replaced or touched: its inode, size, modification time and
    change time (which no tool can set back, unlike the modification time)."""
    found = path.stat()
    return [found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns]


def verified_record(folder: Path) -> Path:
    """Where the verified-at record of the output in ``folder`` lives (beside it, not in it)."""
    return folder.parent / f".verified-{folder.name}.json"


def _read_record(path: Path) -> dict[str, list[int]]:
    try:
        found = json.loads(path.read_text())
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def record_verified(folder: Path, names: list[str], record: Path | None = None) -> None:
    """Note in ``record`` (by default ``verified_record(folder)``) that ``names`` in ``folder`` match their
    manifest as they are now (just built, or just hashed)."""
    record = record or verified_record(folder)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({name: _stamp(folder / name) for name in names}))
        tmp.replace(record)
    except OSError:
        tmp.unlink(missing_ok=True)  # only an optimisation: the next lookup hashes again


def damage(folder: Path, files: Mapping[str, Mapping[str, Any]], *, rehash: bool = False, verified_at: Path | None = None) -> list[str]:
    """What is wrong with ``folder`` against its manifest's ``files`` (name -> sha256, bytes): one line
    each, naming the file; empty when nothing is. Sizes are always checked; hashes when a file changed
    since it was last verified (as ``verified_at`` records, by default ``verified_record(folder)``), or
    always with ``rehash``."""
    verified_at = verified_at or verified_record(folder)
    record = {} if rehash else _read_record(verified_at)
    problems, verified = [], []
    for name, expected in sorted(files.items()):
        path = folder / name
        try:
            stamp = _stamp(path)
        except OSError as error:
            problems.append(f"{name}: cannot be read ({error.strerror or error})")
            continue
        if stamp[1] != expected["bytes"]:
            problems.append(f"{name}: {stamp[1]} bytes where the manifest has {expected['bytes']}")
            continue
        if record.get(name) == stamp:
            verified.append(name)
            continue
        try:
            actual = sha256_file(path)
        except OSError as error:
            problems.append(f"{name}: cannot be read ({error.strerror or error})")
            continue
        if actual != expected["sha256"]:
            problems.append(f"{name}: sha256 {actual[:16]} where the manifest has {expected['sha256'][:16]}")
        else:
            verified.append(name)
    if not problems and verified:
        record_verified(folder, verified, verified_at)
    return problems


def manifest_damage(folder: Path, manifest: bytes, *, rehash: bool = False) -> list[str]:
    """``damage`` of the output in ``folder`` against its manifest's bytes, an unreadable manifest
    included (a lost last write, a bad copy: the output reads as not built)."""
    try:
        files = json.loads(manifest)["files"]
        return damage(folder, files, rehash=rehash)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return [f"manifest.json: unreadable ({type(error).__name__}: {error})"]


def quarantine(folder: Path, problems: list[str]) -> Path:
    """Move the damaged output in ``folder`` to ``<stage>/.corrupt/<key>-<UTC time>/`` with a note of
    what was wrong; return where it went."""
    target = folder.parent / CORRUPT / f"{folder.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder), str(target))
    verified_record(folder).unlink(missing_ok=True)
    (target / DAMAGE_NOTE).write_text("\n".join(problems) + "\n")
    return target


def _seal_verified(record: Path) -> Path:
    """Where the files a seal ``record`` names are noted as verified: one note per seal, since seals share
    a folder (``.<stem>.verified.json`` beside it)."""
    return record.with_name(f".{record.name.removesuffix(SEAL)}.verified.json")


def seal(record: Path, files: list[Path]) -> None:
    """Record ``files``' sha256 and sizes in ``record`` (written last: a cache without it is incomplete),
    noted as verified as written."""
    write_json_atomic(record, {path.name: {"sha256": sha256_file(path), "bytes": path.stat().st_size} for path in files})
    record_verified(record.parent, [path.name for path in files], _seal_verified(record))


def seal_damage(record: Path, *, rehash: bool = False) -> list[str]:
    """What is wrong with the files a ``seal`` record names: one line each; the record itself unreadable
    is one too. As ``damage``: hashed when changed since last verified, or always with ``rehash``."""
    try:
        files = json.loads(record.read_text())
        return damage(record.parent, files, rehash=rehash, verified_at=_seal_verified(record))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return [f"{record.name}: unreadable ({type(error).__name__}: {error})"]
