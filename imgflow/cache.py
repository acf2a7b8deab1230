"""Housekeeping of the artifact store: what is there, who uses it, and pruning what nobody needs.

Every run appends one line to ``<artifacts>/runs.jsonl`` (when, the decision, each stage's key), and
every registered model version records its lineage in its card. An output is *needed* when a
registered version's lineage names it (the champion's included) or one of the most recent runs used
it; ``prune`` removes everything else, and the leftovers of killed runs.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgflow import registry
from imgflow.pipeline import PIPELINE
from imgflow.store import MANIFEST

RUNS = "runs.jsonl"


@dataclass
class Entry:
    stage: str
    key: str
    path: Path
    bytes: int
    created: float
    complete: bool
    runs: list[str] = field(default_factory=list)  # when each run that used it ran
    models: list[str] = field(default_factory=list)  # "name/version" of registered models built from it


def record_run(root: str | Path, summary: Mapping[str, Any]) -> None:
    """Append a finished run to the run log (one JSON line, so concurrent runs cannot interleave)."""
    line = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": summary["model"],
        "decision": summary["decision"],
        "version": summary["version"],
        # stage -> the keys of its outputs this run used (several for a per-partition stage)
        "stages": {
            stage: entry["keys"] if "keys" in entry else [entry["key"]]
            for stage, entry in summary["stages"].items()
            if entry.get("key") or entry.get("keys")
        },
        **({"partitions": summary["partitions"]} if "partitions" in summary else {}),
    }
    with open(Path(root) / RUNS, "a") as log:
        log.write(json.dumps(line, sort_keys=True) + "\n")


def _runs(root: Path) -> list[dict[str, Any]]:
    path = root / RUNS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _used(run: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(stage, key) of every output a logged run used (older logs hold one key per stage)."""
    return {
        (stage, key)
        for stage, keys in run["stages"].items()
        for key in ([keys] if isinstance(keys, str) else keys)
    }


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _model_users(root: Path) -> dict[tuple[str, str], list[str]]:
    users: dict[tuple[str, str], list[str]] = defaultdict(list)
    for folder in sorted((root / "models").glob("*")):
        for version in registry.versions(root, folder.name):
            lineage = registry.card(root, folder.name, version).get("lineage", {})
            for stage, item in lineage.items():
                users[(stage, item["key"])].append(f"{folder.name}/{version}")
    return users


def entries(root: str | Path) -> list[Entry]:
    """Every stage output under ``root``, complete or left by a killed run, with who uses it."""
    root = Path(root)
    models = _model_users(root)
    runs: dict[tuple[str, str], list[str]] = defaultdict(list)
    for run in _runs(root):
        for used in _used(run):
            runs[used].append(run["at"])
    found = []
    for stage in PIPELINE.names:
        for path in sorted((root / stage).glob("*")) if (root / stage).is_dir() else []:
            if not path.is_dir():
                continue
            complete = (path / MANIFEST).is_file()
            key = path.name
            found.append(
                Entry(
                    stage=stage,
                    key=key,
                    path=path,
                    bytes=_size(path),
                    created=path.stat().st_mtime,
                    complete=complete,
                    runs=runs.get((stage, key), []),
                    models=models.get((stage, key), []),
                )
            )
    return found


def _in_use(stage_dir: Path, key: str) -> bool:
    """Whether a live build holds this key's lock right now."""
    lock = stage_dir / f".lock-{key}"
    if not lock.exists():
        return False
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _key_of(entry: Entry) -> str:
    """The key an entry belongs to: ``.tmp-<key>-<id>``, ``.old-<key>-<id>`` and ``.work-<key>`` too."""
    name = entry.key
    if name.startswith((".tmp-", ".old-")):
        return name[5:].rsplit("-", 1)[0]
    return name.removeprefix(".work-")


def prune(root: str | Path, keep_runs: int = 5, dry_run: bool = False) -> list[Entry]:
    """Remove outputs no registered model and none of the last ``keep_runs`` runs used; return them.

    The leftovers of killed runs (``.tmp-``, ``.old-``, ``.work-`` folders) go too, so a killed
    training's checkpoints are gone and its next run starts from scratch. Nothing whose key a live
    build holds the lock of is touched. Lock files stay: removing one under a waiting run would let
    two runs build the same key.
    """
    root = Path(root)
    recent = _runs(root)[-keep_runs:] if keep_runs > 0 else []
    needed = {used for run in recent for used in _used(run)}
    removed = []
    for entry in entries(root):
        if entry.models or (entry.stage, _key_of(entry)) in needed:
            continue
        if _in_use(root / entry.stage, _key_of(entry)):
            continue
        removed.append(entry)
        if not dry_run:
            shutil.rmtree(entry.path, ignore_errors=True)
    return removed
