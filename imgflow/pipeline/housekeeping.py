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

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgflow.pipeline import PIPELINE
from imgflow.registry import versions as registry
from imgflow.store.artifacts import MANIFEST, ArtifactStore


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


def record_run(store: ArtifactStore, summary: Mapping[str, Any]) -> None:
    """Append a finished run to the store's run log: when, the model, the decision and the keys of
    every output it used."""
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
    store.log_run(line)


def _used(run: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(stage, key) of every output a logged run used (older logs hold one key per stage)."""
    return {(stage, key) for stage, keys in run["stages"].items() for key in ([keys] if isinstance(keys, str) else keys)}


def _model_users(store: ArtifactStore) -> dict[tuple[str, str], list[str]]:
    users: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, version, card in store.model_cards():
        for stage, item in card.get("lineage", {}).items():
            users[(stage, item["key"])].append(f"{name}/{version}")
    return users


def entries(store: ArtifactStore) -> list[Entry]:
    """Every stage output in ``store`` (in the bucket, for an object-store root), complete or left
    by a killed run, with who uses it."""
    models = _model_users(store)
    runs: dict[tuple[str, str], list[str]] = defaultdict(list)
    for run in store.logged_runs():
        for used in _used(run):
            runs[used].append(run["at"])
    return [
        Entry(
            stage=stage,
            key=stored.key,
            path=stored.where,
            bytes=stored.bytes,
            created=stored.created,
            complete=stored.complete,
            runs=runs.get((stage, stored.key), []),
            models=models.get((stage, stored.key), []),
        )
        for stage in PIPELINE.names
        for stored in store.outputs(stage)
    ]


def _key_of(entry: Entry) -> str:
    """The key an entry belongs to: ``.tmp-<key>-<id>``, ``.old-<key>-<id>`` and ``.work-<key>`` too."""
    name = entry.key
    if name.startswith((".tmp-", ".old-")):
        return name[5:].rsplit("-", 1)[0]
    return name.removeprefix(".work-")


def prune(store: ArtifactStore, keep_runs: int = 5, dry_run: bool = False) -> list[Entry]:
    """Remove outputs no registered model and none of the last ``keep_runs`` runs used; return them.

    The leftovers of killed runs (``.tmp-``, ``.old-``, ``.work-`` folders) go too, so a killed
    training's checkpoints are gone and its next run starts from scratch. Nothing whose key a live
    build holds the lock of is touched. Lock files stay: removing one under a waiting run would let
    two runs build the same key.
    """
    recent = store.logged_runs()[-keep_runs:] if keep_runs > 0 else []
    needed = {used for run in recent for used in _used(run)}
    removed = []
    for entry in entries(store):
        if entry.models or (entry.stage, _key_of(entry)) in needed:
            continue
        if store.in_use(entry.stage, _key_of(entry)):
            continue
        removed.append(entry)
        if not dry_run:
            store.remove(entry.stage, entry.key)
    return removed


@dataclass(frozen=True)
class Damage:
    """A stored output or model version whose content no longer matches its recorded hashes."""

    what: str  # "<stage> <key>" or "model <name> <version>"
    path: Path
    problems: list[str]
    moved_to: Path | None = None  # where ``--repair`` set it aside


def verify(store: ArtifactStore, repair: bool = False) -> tuple[int, list[Damage]]:
    """Re-hash every complete stage output, every sealed cache beside them (a train stage's frozen
    features) and every registered model version in ``store``'s local folder (the mirror, for an object-store
    root: the root itself is checked on every fetch) against its manifest, seal or card, like ``restic
    check``; return how many were checked and the damaged ones. With ``repair``, damaged stage outputs are
    set aside (``imgflow.store.integrity.quarantine``) so the next run rebuilds them, damaged cache files
    are removed (the next use computes them again); a damaged model version is only reported (it cannot
    be rebuilt: promote another)."""
    from imgflow.store.integrity import SEAL, SEALED_CACHE, damage, manifest_damage, quarantine, seal_damage

    checked, found = 0, []
    for stage in PIPELINE.names:
        for stored in store.local_outputs(stage):  # the local folder, or an object-store root's mirror
            if not stored.complete:
                continue
            checked += 1
            folder = Path(stored.where)
            problems = manifest_damage(folder, (folder / MANIFEST).read_bytes(), rehash=True)
            if problems:
                moved = quarantine(folder, problems) if repair else None
                found.append(Damage(f"{stage} {stored.key}", folder, problems, moved))
    # Caches kept beside the outputs (a train stage's frozen features), sealed file by file: a damaged
    # one would be computed again on its next use; with ``repair``, its files go now.
    for record in sorted(store.folder.glob(f"*/{SEALED_CACHE}/*/*{SEAL}")):
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
