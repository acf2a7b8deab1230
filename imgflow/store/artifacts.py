"""The artifact store: where every stage output lives, and the truth about what is already done.

Layout under the root (``artifacts/`` by default)::

    <stage>/<key>/            one complete output of a stage for one key
        manifest.json         written last: stage, key, config, input fingerprints, files and their
                              sha256, the stage's own info, and the output fingerprint
        ...                   the stage's files (documented in each stage module)
    <stage>/.tmp-<key>-<id>/  an output being written; never read, removed on the next attempt
    <stage>/.work-<key>/      scratch that survives a crash (training checkpoints), so a rerun of the
                              same key can resume; removed once the output is complete
    models/<name>/            the model registry (see ``imgflow.registry.versions``)

An output is complete exactly when its ``manifest.json`` exists: the stage writes into a temporary
folder, the manifest goes in last, and one ``rename`` moves the folder into place. A crash at any point
leaves either the previous state or a complete output, never a partial one a later run could take for
complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from imgflow import __version__
from imgflow.results import Info, StageResult
from imgflow.runtime import memory
from imgflow.runtime.errors import ConfigError
from imgflow.store.files import file_lock, file_table, swap_in, write_bytes_atomic, write_json_atomic
from imgflow.store.fingerprint import stable_hash
from imgflow.store.integrity import damage, manifest_damage, quarantine, record_verified
from imgflow.store.objectstore import ObjectRoot, is_remote, mirror_dir
from imgflow.store.scratch import SHARED_SCRATCH

MANIFEST = "manifest.json"
KEY_LENGTH = 20
# (stage, key) -> what was wrong with its output, moved aside since: the rebuild reports it as repaired
REPAIRED: dict[tuple[str, str], str] = {}
# What a build returns: its stage's info model (a plain mapping for ad-hoc stages, e.g. in tests).
Built = Info | Mapping[str, Any]


class ArtifactStore:
    """Stage outputs keyed by content, under one root: a local folder, or an object-store URI
    (``s3://bucket/prefix``) worked through a local mirror.

    With an object-store root the remote copy is the truth: an output counts as complete when its
    manifest is there, and ``lookup`` brings a complete output into the mirror (checking every file
    against the manifest) before handing out its local path. ``build`` takes the local lock and the
    root's cross-machine lease (``imgflow.store.objectstore``), builds locally as for a local root, then
    publishes: every file first, the manifest last. The registry (``models/``) moves the same way,
    under a lease per model (``models``).
    """

    def __init__(self, root: str | Path, mirror: Path | None = None) -> None:
        """``mirror``: the local folder of an object-store root (default: ``objectstore.mirror_dir``)."""
        self.remote = ObjectRoot(str(root)) if is_remote(root) else None
        self.root = (mirror or mirror_dir(str(root))) if self.remote else Path(root).resolve()
        self.uri = self.remote.uri if self.remote else str(self.root)

    def stage_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def _local(self, stage: str, key: str) -> StageResult | None:
        """The complete, undamaged local output of ``key``; a damaged one (``imgflow.store.integrity``: an
        unreadable manifest, a file missing, resized or rehashed) is moved aside and reads as not built."""
        folder = self.stage_dir(stage, key)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            return None
        manifest_bytes = manifest_path.read_bytes()
        problems = manifest_damage(folder, manifest_bytes)
        if problems:
            where = quarantine(folder, problems)
            REPAIRED[(stage, key)] = f"{'; '.join(problems)} (moved to {where})"
            logging.getLogger("imgflow").warning(
                "%s output %s is damaged: %s; moved to %s, and it is built again", stage, key, "; ".join(problems), where
            )
            return None
        return self._result(stage, key, manifest_bytes)

    def _result(self, stage: str, key: str, manifest_bytes: bytes) -> StageResult:
        manifest = json.loads(manifest_bytes)
        return StageResult(
            stage=stage,
            key=key,
            path=str(self.stage_dir(stage, key)),
            fingerprint=manifest["fingerprint"],
            status="cached",
            info=manifest["info"],  # read back as the stage's info type
            uri=self.remote.url(f"{stage}/{key}") if self.remote else None,
        )

    def lookup(self, stage: str, key: str, *, fetch: bool = True) -> StageResult | None:
        """The complete output for ``key``, or None when there is none.

        With an object-store root, the output is brought into the local mirror first (unless
        ``fetch`` is False: then only its manifest is read, for plans that need no files).
        """
        if self.remote is None:
            return self._local(stage, key)
        remote = self.remote.read_bytes(f"{stage}/{key}/{MANIFEST}")
        if remote is None:
            return None
        local = self.stage_dir(stage, key) / MANIFEST
        if not fetch:
            return self._result(stage, key, remote)
        if local.is_file() and local.read_bytes() == remote:
            if not damage(local.parent, json.loads(remote)["files"]):
                return self._result(stage, key, remote)
            local.unlink()  # a damaged mirror copy: fetched again from the root, which is the truth
        parent = self.root / stage
        parent.mkdir(parents=True, exist_ok=True)
        with file_lock(parent / f".fetch-{key}"):
            if not (local.is_file() and local.read_bytes() == remote):
                tmp = parent / f".fetch-{key}-{uuid.uuid4().hex[:8]}"
                try:
                    self.remote.download(f"{stage}/{key}", json.loads(remote)["files"], tmp)
                    (tmp / MANIFEST).write_bytes(remote)
                    swap_in(tmp, self.stage_dir(stage, key))
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        return self._result(stage, key, remote)

    def localize(self, result: StageResult) -> StageResult:
        """``result`` (built here or on another machine) with its files in this store's local folder."""
        if self.remote is None:
            return result
        found = self.lookup(result.stage, result.key)
        if found is not None:
            return found.with_status(result.status)
        if Path(result.path).exists():
            return result  # not a stage output (the champion, from the pulled registry)
        raise FileNotFoundError(f"{result.stage} output {result.key} is not in the artifact root {self.uri}")

    @contextlib.contextmanager
    def _locked(self, folder: Path, name: str) -> Iterator[Any]:
        """The lock on ``name`` in ``folder``: a file lock here, and the root's lease when it is remote."""
        folder.mkdir(parents=True, exist_ok=True)
        with file_lock(folder / f".lock-{name}"):
            if self.remote is None:
                yield None
                return
            with self.remote.lease(f"{folder.relative_to(self.root).as_posix()}/.lease-{name}") as lease:
                yield lease

    def build(
        self,
        stage: str,
        key: str,
        build: Callable[[Path], Built],
        *,
        config: Any,
        inputs: Mapping[str, str],
        force: bool = False,
    ) -> StageResult:
        """Return the output for ``key``, calling ``build(tmp_dir) -> info`` only when it is missing.

        ``build`` returns the stage's info (see ``imgflow.results``). Runs that ask for the same key
        at once take turns on a lock (across machines for an object-store root): the first builds,
        the others wait and then find its output. ``force`` rebuilds even when an output exists, then
        swaps it in. An output found on an object-store root is not fetched here: ``localize`` does
        that where its files are read.
        """
        existing = self.lookup(stage, key, fetch=False)
        if existing is not None and not force:
            return existing
        with self._locked(self.root / stage, key) as lease:
            existing = self.lookup(stage, key, fetch=False)
            if existing is not None and not force:
                return existing
            local = self._local(stage, key)
            if local is not None and not force and self.remote is not None:
                # Built here by a run that died before publishing it: publish, do not rebuild.
                self._publish(stage, key, lease)
                return local
            result = self._build_locked(stage, key, build, {"config": config, "inputs": dict(inputs)})
            if self.remote is not None:
                self._publish(stage, key, lease, replace=force)
                for name in self.remote.files(f"{stage}/.work-{key}"):  # shared scratch (see shared_scratch)
                    self.remote.delete(f"{stage}/.work-{key}/{name}")
            return result

    def _publish(self, stage: str, key: str, lease: Any, replace: bool = False) -> None:
        """Copy the local output of ``key`` to the object-store root: files first, manifest last
        (after removing the old manifest when replacing, so no reader mixes the two)."""
        assert self.remote is not None
        folder, prefix = self.stage_dir(stage, key), f"{stage}/{key}"
        manifest = (folder / MANIFEST).read_bytes()
        files = sorted(json.loads(manifest)["files"])
        if replace:
            self.remote.delete(f"{prefix}/{MANIFEST}")
        self.remote.upload(folder, files, prefix)
        _failpoint(f"{stage}@publish", folder.parent / f".failpoint-{key}")
        lease.check()
        self.remote.write_bytes(f"{prefix}/{MANIFEST}", manifest)
        for stale in set(self.remote.files(prefix)) - {*files, MANIFEST}:
            self.remote.delete(f"{prefix}/{stale}")

    def _build_locked(self, stage: str, key: str, build: Callable[[Path], Built], provenance: dict[str, Any]) -> StageResult:
        """``build`` under this key's lock: into a temporary folder, manifest last, renamed into place."""
        parent = self.root / stage
        # Leftovers of runs that died holding this key's lock (we hold it now, so none is live).
        for stale in [*parent.glob(f".tmp-{key}-*"), *parent.glob(f".old-{key}-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        shared = SHARED_SCRATCH.set(self.remote.url(f"{stage}/.work-{key}") if self.remote else None)
        before = memory.resident()
        try:
            started = time.time()
            built = build(tmp)
            info = built if isinstance(built, Info) else Info(**built)
            _failpoint(stage, tmp / ".failpoint")
            files = file_table(tmp)
            if not files:
                raise RuntimeError(f"stage {stage!r} produced no output in {tmp}")
            manifest = {
                "stage": stage,
                "key": key,
                "imgflow_version": __version__,
                **provenance,
                "files": files,
                "fingerprint": info.content_fingerprint or stable_hash(files),
                "info": info.model_dump(mode="json"),
                "seconds": round(time.time() - started, 3),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_json_atomic(tmp / MANIFEST, manifest)
            swap_in(tmp, self.stage_dir(stage, key))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            SHARED_SCRATCH.reset(shared)
            memory.release(grown_since=before)  # what the build freed, for the stages after it
        shutil.rmtree(parent / f".work-{key}", ignore_errors=True)
        record_verified(self.stage_dir(stage, key), list(files))  # hashed as they were written: no re-hash on reuse
        result = self._local(stage, key)
        assert result is not None
        return result.model_copy(update={"status": "ran", "repaired": REPAIRED.pop((stage, key), None)})

    def pull_models(self, name: str | None = None) -> Path:
        """Bring the registry of model ``name`` (every model when None) into the local folder: the
        champion pointer, its history and every version not here yet. Returns the local root, where
        ``imgflow.registry.versions`` reads it. A no-op on a local root."""
        if self.remote is not None:
            names = [name] if name else sorted({f.split("/", 1)[0] for f in self.remote.files("models")})
            for model in names:
                self._pull_model(model)
        return self.root

    def _pull_model(self, name: str) -> None:
        assert self.remote is not None
        prefix, folder = f"models/{name}", self.root / "models" / name
        found = self.remote.files(prefix)
        if not found:
            return
        folder.mkdir(parents=True, exist_ok=True)
        versions = {f.split("/", 1)[0] for f in found if f.endswith("/card.json") and f.count("/") == 1}
        for version in sorted(versions - {p.name for p in folder.iterdir() if p.is_dir()}):
            self._fetch_version(name, version, [f.split("/", 1)[1] for f in found if f.startswith(f"{version}/")])
        for pointer in ("history.jsonl", "champion.json"):
            data = self.remote.read_bytes(f"{prefix}/{pointer}")
            if data is not None:
                write_bytes_atomic(folder / pointer, data)

    def pull_version(self, name: str, version: str) -> Path:
        """The local folder of model ``name``'s ``version``, fetched from an object-store root if this
        machine has none yet (a registered version never changes), alone: what a worker of a batch
        prediction needs, not the whole registry."""
        folder = self.root / "models" / name / version
        if self.remote is not None and not folder.is_dir():
            names = self.remote.files(f"models/{name}/{version}")
            if "card.json" not in names:  # pushed last: without it the version is not registered (yet)
                raise ConfigError(f"{self.remote.url(f'models/{name}/{version}')} is not a registered model version")
            folder.parent.mkdir(parents=True, exist_ok=True)
            self._fetch_version(name, version, names)
        return folder

    def _fetch_version(self, name: str, version: str, names: list[str]) -> None:
        """Download a version's files into a temporary folder, renamed into place once complete."""
        assert self.remote is not None
        folder = self.root / "models" / name
        tmp = folder / f".fetch-{version}-{uuid.uuid4().hex[:8]}"
        try:
            self.remote.download(f"models/{name}/{version}", names, tmp)
            with contextlib.suppress(OSError):  # another process here pulled it first
                os.rename(tmp, folder / version)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @contextlib.contextmanager
    def models(self, name: str) -> Iterator[Path]:
        """Change the registry of model ``name``: one writer at a time (across machines for an
        object-store root, where the registry is pulled first and pushed back after: new versions,
        card last, then the history and the champion pointer). Yields the local root."""
        with self._locked(self.root / "models" / name, "registry") as lease:
            self.pull_models(name)
            yield self.root
            if self.remote is not None:
                self._push_model(name, lease)

    def _push_model(self, name: str, lease: Any) -> None:
        assert self.remote is not None
        prefix, folder = f"models/{name}", self.root / "models" / name
        published = {f.split("/", 1)[0] for f in self.remote.files(prefix) if f.endswith("/card.json")}
        for version in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "card.json").is_file()):
            if version.name in published:
                continue  # versions never change once registered
            names = sorted(p.relative_to(version).as_posix() for p in version.rglob("*") if p.is_file())
            self.remote.upload(version, [n for n in names if n != "card.json"], f"{prefix}/{version.name}")
            self.remote.upload(version, ["card.json"], f"{prefix}/{version.name}")
        lease.check()
        for pointer in ("history.jsonl", "champion.json"):
            if (folder / pointer).is_file():
                self.remote.upload(folder, [pointer], prefix)


FAILPOINT = "IMGFLOW_FAILPOINT"


def _failpoint(point: str, marker: Path) -> None:
    """Crash-test hook: with IMGFLOW_FAILPOINT=<point>, stop here.

    Points: ``<stage>`` (the stage wrote all its files, no manifest yet) and ``<stage>@publish`` (an
    object-store root holds its files, not yet its manifest). Touches ``marker`` and sleeps, so a
    test can SIGKILL the run at the worst moment. ``raise:<point>`` raises there instead: a bug, for
    the tests of what a run does with an error it did not expect.
    """
    wanted = os.environ.get(FAILPOINT)
    if wanted == f"raise:{point}":
        raise RuntimeError(f"{FAILPOINT}={wanted}: a simulated bug")
    if wanted == point:
        marker.touch()
        time.sleep(600)
