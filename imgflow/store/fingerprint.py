"""Content fingerprints: the basis of every cache key. Never a timestamp, never a run id."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Marker:
    """A mark on a config field (``Annotated[float, KEYLESS]``), read where the field's role matters."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name.upper()


KEYLESS = Marker("keyless")  # it cannot change an output: it keys nothing
INTERNAL = Marker("internal")  # a stage records it for itself: no spec sets it


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        keyless = [name for name, info in type(obj).model_fields.items() if KEYLESS in info.metadata]
        return {name: value for name, value in obj.model_dump(mode="json").items() if name not in keyless}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def stable_hash(obj: Any) -> str:
    """Hash of a JSON-able value (dataclasses included) that does not depend on dict order."""
    text = json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return sha256_bytes(text.encode())


def to_jsonable(obj: Any) -> Any:
    """The plain JSON value of ``obj`` (dataclasses and pydantic models become dicts, tuples lists,
    paths strings)."""
    return _jsonable(obj)


def code_fingerprint() -> str:
    """A hash of imgflow's own source (the imgflow, tasks and flows packages): which code made a model."""
    repo = Path(__file__).resolve().parents[2]
    files = sorted(p for package in ("imgflow", "tasks", "flows") for p in (repo / package).rglob("*.py"))
    return stable_hash([(p.relative_to(repo).as_posix(), sha256_file(p)) for p in files])
