"""Housekeeping of the artifact store: what is there, who uses it, and pruning what nobody needs.

Every run appends one line to ``<artifacts>/runs.jsonl`` (when, the decision, each stage's key), and
every registered model version records its lineage in its card. An output is *needed* when a
registered version's lineage names it (the champion's included) or one of the most recent runs used
it; ``prune`` removes everything else, and the leftovers of killed runs.

On an object-store root (``s3://bucket/prefix``) the bucket is listed and pruned, not this machine's
mirror: each run is also logged there as one object (``runs/<when>-<id>.json``, so runs on several
machines never rewrite one file), the models' lineage is read from their cards in the bucket, a key
whose lease object is there is being built and left alone, and an output is removed manifest first,
so that no run takes what is left of it for complete. The mirror's copy of a removed output goes too.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgflow.pipeline import PIPELINE
from imgflow.registry import versions as registry
from imgflow.store.artifacts import MANIFEST, ArtifactStore
from imgflow.store.integrity import CORRUPT

RUNS = "runs.jsonl"
REMOTE_RUNS = "runs"  # an object-store root's run log: one object per run


@dataclass
class Entry:
    stage: str
    key: str
    path: Path | str  # a local folder, or the output's URI on an object-store root
    bytes: int
    created: float
    complete: bool
    runs: list[str] = field(default_factory=list)  # when each run that used it ran
    models: list[str] = field(default_factory=list)  # "name/version" of registered models built from it


def record_run(root: str | Path, summary: Mapping[str, Any]) -> None:
    """Append a finished run to the run log (one JSON line, so concurrent runs cannot interleave); on
    an object-store root, to the mirror's and, as an object of its own, to the bucket's."""
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
    store = ArtifactStore(root)
    text = json.dumps(line, sort_keys=True)
    with open(store.root / RUNS, "a") as log:
        log.write(text + "\n")
    if store.remote is not None:
        store.remote.write_bytes(f"{REMOTE_RUNS}/{line['at']}-{uuid.uuid4().hex[:8]}.json", text.encode())


def _runs(store: ArtifactStore) -> list[dict[str, Any]]:
    """Every logged run, oldest first."""
    if store.remote is not None:
        names = [f"{REMOTE_RUNS}/{name}" for name in store.remote.files(REMOTE_RUNS) if name.endswith(".json")]
        with ThreadPoolExecutor(8) as pool:
            return [json.loads(data) for data in pool.map(store.remote.read_bytes, names) if data is not None]
    path = store.root / RUNS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _used(run: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(stage, key) of every output a logged run used (older logs hold one key per stage)."""
    return {(stage, key) for stage, keys in run["stages"].items() for key in ([keys] if isinstance(keys, str) else keys)}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _cards(store: ArtifactStore) -> list[tuple[str, str, dict[str, Any]]]:
    """(model, version, card) of every registered version: read in the bucket on an object-store root
    (its cards alone, not the models)."""
    if store.remote is None:
        root = store.root
        names = sorted(p.name for p in (root / "models").glob("*"))
        return [(name, version, registry.card(root, name, version)) for name in names for version in registry.versions(root, name)]
    remote = store.remote
    cards = [f for f in remote.files("models") if f.count("/") == 2 and f.endswith("/card.json")]
    with ThreadPoolExecutor(8) as pool:
        data = list(pool.map(lambda f: remote.read_bytes(f"models/{f}"), cards))
    return [(*f.split("/")[:2], json.loads(card)) for f, card in zip(cards, data, strict=True) if card is not None]


def _model_users(store: ArtifactStore) -> dict[tuple[str, str], list[str]]:
    users: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, version, card in _cards(store):
        for stage, item in card.get("lineage", {}).items():
            users[(stage, item["key"])].append(f"{name}/{version}")
    return users


def entries(root: str | Path) -> list[Entry]:
    """Every stage output under ``root`` (in the bucket, for an object-store root), complete or left
    by a killed run, with who uses it."""
    store = ArtifactStore(root)
    models = _model_users(store)
    runs: dict[tuple[str, str], list[str]] = defaultdict(list)
    for run in _runs(store):
        for used in _used(run):
            runs[used].append(run["at"])
    if store.remote is not None:
        return _remote_entries(store, runs, models)
    root = store.root
    found = []
    for stage in PIPELINE.names:
        for path in sorted((root / stage).glob("*")) if (root / stage).is_dir() else []:
            if not path.is_dir() or path.name == CORRUPT:  # damaged outputs set aside stay for a person to look at
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


def _remote_entries(
    store: ArtifactStore, runs: Mapping[tuple[str, str], list[str]], models: Mapping[tuple[str, str], list[str]]
) -> list[Entry]:
    assert store.remote is not None
    found = []
    for stage in PIPELINE.names:
        outputs: dict[str, list[tuple[str, int, float]]] = defaultdict(list)
        for name, size, modified in store.remote.listing(stage):
            key, sep, rest = name.partition("/")
            if sep:  # top-level objects are leases
                outputs[key].append((rest, size, modified))
        for key, files in sorted(outputs.items()):
            names = {name: modified for name, _, modified in files}
            found.append(
                Entry(
                    stage=stage,
                    key=key,
                    path=store.remote.url(f"{stage}/{key}"),
                    bytes=sum(size for _, size, _ in files),
                    created=names.get(MANIFEST, max(names.values())),
                    complete=MANIFEST in names,
                    runs=runs.get((stage, key), []),
                    models=models.get((stage, key), []),
                )
            )
    return found


def _in_use(store: ArtifactStore, stage: str, key: str) -> bool:
    """Whether a live build holds this key's lock right now (on an object-store root: whether its
    lease object is there, a dead holder's included until a run takes it over)."""
    if store.remote is not None:
        return store.remote.read_bytes(f"{stage}/.lease-{key}") is not None
    lock = store.root / stage / f".lock-{key}"
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
    store = ArtifactStore(root)
    recent = _runs(store)[-keep_runs:] if keep_runs > 0 else []
    needed = {used for run in recent for used in _used(run)}
    removed = []
    for entry in entries(root):
        if entry.models or (entry.stage, _key_of(entry)) in needed:
            continue
        if _in_use(store, entry.stage, _key_of(entry)):
            continue
        removed.append(entry)
        if not dry_run:
            _remove(store, entry)
    return removed


def _remove(store: ArtifactStore, entry: Entry) -> None:
    if store.remote is not None:
        folder = f"{entry.stage}/{entry.key}"
        for name in sorted(store.remote.files(folder), key=lambda name: name != MANIFEST):  # manifest first: incomplete at once
            store.remote.delete(f"{folder}/{name}")
    shutil.rmtree(store.root / entry.stage / entry.key, ignore_errors=True)


@dataclass(frozen=True)
class Damage:
    """A stored output or model version whose content no longer matches its recorded hashes."""

    what: str  # "<stage> <key>" or "model <name> <version>"
    path: Path
    problems: list[str]
    moved_to: Path | None = None  # where ``--repair`` set it aside


def verify(root: str | Path, repair: bool = False) -> tuple[int, list[Damage]]:
    """Re-hash every complete stage output, every sealed cache beside them (a train stage's frozen
    features) and every registered model version under ``root`` (its local mirror, for an object-store
    root: the root itself is checked on every fetch) against its manifest, seal or card, like ``restic
    check``; return how many were checked and the damaged ones. With ``repair``, damaged stage outputs are
    set aside (``imgflow.store.integrity.quarantine``) so the next run rebuilds them, damaged cache files
    are removed (the next use computes them again); a damaged model version is only reported (it cannot
    be rebuilt: promote another)."""
    from imgflow.store.integrity import SEAL, SEALED_CACHE, damage, manifest_damage, quarantine, seal_damage

    store = ArtifactStore(root)
    checked, found = 0, []
    for entry in entries(store.root):  # the local folder, or an object-store root's mirror
        if not entry.complete:
            continue
        checked += 1
        folder = Path(entry.path)  # a local root's folder: verify reads the mirror of an object-store root
        problems = manifest_damage(folder, (folder / MANIFEST).read_bytes(), rehash=True)
        if problems:
            moved = quarantine(folder, problems) if repair else None
            found.append(Damage(f"{entry.stage} {entry.key}", folder, problems, moved))
    # Caches kept beside the outputs (a train stage's frozen features), sealed file by file: a damaged
    # one would be computed again on its next use; with ``repair``, its files go now.
    for record in sorted(store.root.glob(f"*/{SEALED_CACHE}/*/*{SEAL}")):
        checked += 1
        problems = seal_damage(record, rehash=True)
        if problems:
            if repair:
                for path in record.parent.glob(record.name.removesuffix(SEAL) + ".*"):
                    path.unlink(missing_ok=True)
            stage = record.parent.parent.parent.name
            found.append(Damage(f"{stage} features {record.parent.name}/{record.name.removesuffix(SEAL)}", record.parent, problems))
    models = store.pull_models()
    for name in sorted(p.name for p in (models / "models").glob("*") if p.is_dir()):
        for version in registry.versions(models, name):
            folder = registry.model_dir(models, name) / version
            files = registry.card(models, name, version).get("files")
            if files is None:
                continue
            checked += 1
            problems = damage(folder, files, rehash=True)
            if problems:
                found.append(Damage(f"model {name} {version}", folder, problems))
    return checked, found
