"""The artifact store's backend for an object-store root (``s3://bucket/prefix``): the remote copy is
the truth, worked through a local mirror (``imgflow.store.objectstore.mirror_dir``).

An output counts as complete when its manifest is on the root; ``lookup`` brings a complete output into
the mirror (checking every file against the manifest) before handing out its local path. ``build``
takes the local lock and the root's cross-machine lease (``imgflow.store.objectstore``), builds locally
as a local root does, then publishes: every file first, the manifest last. The registry (``models/``)
moves the same way, under a lease per model: new versions (card last), then the history and the
champion pointer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from imgflow.results import StageResult
from imgflow.runtime.errors import ConfigError
from imgflow.store.artifacts import MANIFEST, ArtifactStore, Stored, failpoint
from imgflow.store.files import file_lock, swap_in, write_bytes_atomic
from imgflow.store.integrity import damage
from imgflow.store.objectstore import ObjectRoot, mirror_dir

REMOTE_RUNS = "runs"  # an object-store root's run log: one object per run


class RemoteArtifactStore(ArtifactStore):
    """Stage outputs on an object-store root, read and written through the local folder ``folder`` (its
    mirror on this machine: ``mirror``, default ``objectstore.mirror_dir``)."""

    def __init__(self, uri: str, mirror: Path | None = None) -> None:
        self.objects = ObjectRoot(uri)
        self.folder = mirror or mirror_dir(uri)
        self.uri = self.objects.uri

    def url(self, relative: str) -> str:
        return self.objects.url(relative)

    def link(self, relative: str) -> str:
        """A presigned GET (a week): the local mirror's path means nothing on a person's machine."""
        return self.objects.link(relative)

    @property
    def shared_uri(self) -> str:
        return self.uri

    def lookup(self, stage: str, key: str, *, fetch: bool = True) -> StageResult | None:
        remote = self.objects.read_bytes(f"{stage}/{key}/{MANIFEST}")
        if remote is None:
            return None
        local = self.stage_dir(stage, key) / MANIFEST
        if not fetch:
            return self._result(stage, key, remote)
        if local.is_file() and local.read_bytes() == remote:
            if not damage(local.parent, json.loads(remote)["files"]):
                return self._result(stage, key, remote)
            local.unlink()  # a damaged mirror copy: fetched again from the root, which is the truth
        parent = self.folder / stage
        parent.mkdir(parents=True, exist_ok=True)
        with file_lock(parent / f".fetch-{key}"):
            if not (local.is_file() and local.read_bytes() == remote):
                tmp = parent / f".fetch-{key}-{uuid.uuid4().hex[:8]}"
                try:
                    self.objects.download(f"{stage}/{key}", json.loads(remote)["files"], tmp)
                    (tmp / MANIFEST).write_bytes(remote)
                    swap_in(tmp, self.stage_dir(stage, key))
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        return self._result(stage, key, remote)

    def localize(self, result: StageResult) -> StageResult:
        found = self.lookup(result.stage, result.key)
        if found is not None:
            return found.with_status(result.status)
        if Path(result.path).exists():
            return result  # not a stage output (the champion, from the pulled registry)
        raise FileNotFoundError(f"{result.stage} output {result.key} is not in the artifact root {self.uri}")

    @contextlib.contextmanager
    def _locked(self, folder: Path, name: str) -> Iterator[Any]:
        """The file lock, then the root's lease on ``name`` (yielded: a publish checks it still holds)."""
        relative = f"{folder.relative_to(self.folder).as_posix()}/.lease-{name}"
        with super()._locked(folder, name), self.objects.lease(relative) as lease:
            yield lease

    def _complete(self, stage: str, key: str, lease: Any, replace: bool = False) -> None:
        """Publish the local output of ``key``: files first, manifest last (after removing the old
        manifest when replacing, so no reader mixes the two); then its shared scratch goes."""
        folder, prefix = self.stage_dir(stage, key), f"{stage}/{key}"
        manifest = (folder / MANIFEST).read_bytes()
        files = sorted(json.loads(manifest)["files"])
        if replace:
            self.objects.delete(f"{prefix}/{MANIFEST}")
        self.objects.upload(folder, files, prefix)
        failpoint(f"{stage}@publish", folder.parent / f".failpoint-{key}")
        lease.check()
        self.objects.write_bytes(f"{prefix}/{MANIFEST}", manifest)
        for stale in set(self.objects.files(prefix)) - {*files, MANIFEST}:
            self.objects.delete(f"{prefix}/{stale}")
        for name in self.objects.files(f"{stage}/.work-{key}"):  # shared scratch (imgflow.store.scratch)
            self.objects.delete(f"{stage}/.work-{key}/{name}")

    def log_run(self, line: Mapping[str, Any]) -> None:
        """The mirror's log, and the bucket's: one object per run (``runs/``)."""
        super().log_run(line)
        text = json.dumps(line, sort_keys=True)
        self.objects.write_bytes(f"{REMOTE_RUNS}/{line['at']}-{uuid.uuid4().hex[:8]}.json", text.encode())

    def logged_runs(self) -> list[dict[str, Any]]:
        names = [f"{REMOTE_RUNS}/{name}" for name in self.objects.files(REMOTE_RUNS) if name.endswith(".json")]
        with ThreadPoolExecutor(8) as pool:
            return [json.loads(data) for data in pool.map(self.objects.read_bytes, names) if data is not None]

    def model_cards(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Read in the bucket: its cards alone, not the models."""
        cards = [f for f in self.objects.files("models") if f.count("/") == 2 and f.endswith("/card.json")]
        with ThreadPoolExecutor(8) as pool:
            data = list(pool.map(lambda f: self.objects.read_bytes(f"models/{f}"), cards))
        return [(*f.split("/")[:2], json.loads(card)) for f, card in zip(cards, data, strict=True) if card is not None]

    def outputs(self, stage: str) -> list[Stored]:
        """Listed in the bucket, not this machine's mirror."""
        grouped: dict[str, list[tuple[str, int, float]]] = defaultdict(list)
        for name, size, modified in self.objects.listing(stage):
            key, sep, rest = name.partition("/")
            if sep:  # top-level objects are leases
                grouped[key].append((rest, size, modified))
        found = []
        for key, files in sorted(grouped.items()):
            names = {name: modified for name, _, modified in files}
            created = names.get(MANIFEST, max(names.values()))
            found.append(Stored(key, self.objects.url(f"{stage}/{key}"), sum(size for _, size, _ in files), created, MANIFEST in names))
        return found

    def in_use(self, stage: str, key: str) -> bool:
        """Whether its lease object is there (a dead holder's included, until a run takes it over)."""
        return self.objects.read_bytes(f"{stage}/.lease-{key}") is not None

    def remove(self, stage: str, key: str) -> None:
        folder = f"{stage}/{key}"
        for name in sorted(self.objects.files(folder), key=lambda name: name != MANIFEST):  # manifest first: incomplete at once
            self.objects.delete(f"{folder}/{name}")
        super().remove(stage, key)

    def pull_models(self, name: str | None = None) -> Path:
        names = [name] if name else sorted({f.split("/", 1)[0] for f in self.objects.files("models")})
        for model in names:
            self._pull_model(model)
        return self.folder

    def _pull_model(self, name: str) -> None:
        prefix, folder = f"models/{name}", self.folder / "models" / name
        found = self.objects.files(prefix)
        if not found:
            return
        folder.mkdir(parents=True, exist_ok=True)
        versions = {f.split("/", 1)[0] for f in found if f.endswith("/card.json") and f.count("/") == 1}
        for version in sorted(versions - {p.name for p in folder.iterdir() if p.is_dir()}):
            self._fetch_version(name, version, [f.split("/", 1)[1] for f in found if f.startswith(f"{version}/")])
        for pointer in ("history.jsonl", "champion.json"):
            data = self.objects.read_bytes(f"{prefix}/{pointer}")
            if data is not None:
                write_bytes_atomic(folder / pointer, data)

    def pull_version(self, name: str, version: str) -> Path:
        folder = super().pull_version(name, version)
        if not folder.is_dir():  # a registered version never changes: fetched once
            names = self.objects.files(f"models/{name}/{version}")
            if "card.json" not in names:  # pushed last: without it the version is not registered (yet)
                raise ConfigError(f"{self.objects.url(f'models/{name}/{version}')} is not a registered model version")
            folder.parent.mkdir(parents=True, exist_ok=True)
            self._fetch_version(name, version, names)
        return folder

    def _fetch_version(self, name: str, version: str, names: list[str]) -> None:
        """Download a version's files into a temporary folder, renamed into place once complete."""
        folder = self.folder / "models" / name
        tmp = folder / f".fetch-{version}-{uuid.uuid4().hex[:8]}"
        try:
            self.objects.download(f"models/{name}/{version}", names, tmp)
            with contextlib.suppress(OSError):  # another process here pulled it first
                os.rename(tmp, folder / version)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @contextlib.contextmanager
    def models(self, name: str) -> Iterator[Path]:
        with self._locked(self.folder / "models" / name, "registry") as lease:
            self.pull_models(name)
            yield self.folder
            self._push_model(name, lease)

    def _push_model(self, name: str, lease: Any) -> None:
        prefix, folder = f"models/{name}", self.folder / "models" / name
        published = {f.split("/", 1)[0] for f in self.objects.files(prefix) if f.endswith("/card.json")}
        for version in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "card.json").is_file()):
            if version.name in published:
                continue  # versions never change once registered
            names = sorted(p.relative_to(version).as_posix() for p in version.rglob("*") if p.is_file())
            self.objects.upload(version, [n for n in names if n != "card.json"], f"{prefix}/{version.name}")
            self.objects.upload(version, ["card.json"], f"{prefix}/{version.name}")
        lease.check()
        for pointer in ("history.jsonl", "champion.json"):
            if (folder / pointer).is_file():
                self.objects.upload(folder, [pointer], prefix)
