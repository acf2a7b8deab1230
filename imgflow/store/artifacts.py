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
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from imgflow import __version__
from imgflow.results import Info, StageResult
from imgflow.runtime import memory
from imgflow.store.files import file_lock, file_table, swap_in, write_json_atomic
from imgflow.store.fingerprint import stable_hash
from imgflow.store.integrity import CORRUPT, manifest_damage, quarantine, record_verified
from imgflow.store.scratch import SHARED_SCRATCH

MANIFEST = "manifest.json"
KEY_LENGTH = 20
# (stage, key) -> what was wrong with its output, moved aside since: the rebuild reports it as repaired
REPAIRED: dict[tuple[str, str], str] = {}
# What a build returns: its stage's info model (a plain mapping for ad-hoc stages, e.g. in tests).
Built = Info | Mapping[str, Any]
RUNS = "runs.jsonl"  # the run log (imgflow.pipeline.housekeeping)


class Stored(NamedTuple):
    """One output (or a killed run's leftover) as the store holds it."""

    key: str  # its folder's name: the key, or ``.tmp-<key>-<id>``, ``.old-<key>-<id>``, ``.work-<key>``
    where: Path | str  # a local folder, or its URI on an object-store root
    bytes: int
    created: float
    complete: bool


class ArtifactStore:
    """Stage outputs keyed by content, under one local folder: the store's interface, and its backend
    for a local root. ``imgflow.store.remote.RemoteArtifactStore`` is the other backend (an
    object-store root worked through a local mirror); ``imgflow.store.roots.open_store`` chooses one
    when a root is opened, and callers never ask which they hold.

    Every output is read and written in the local folder ``folder`` (``uri`` is the root): the backends differ in where the
    truth is (here: this folder), what ``lookup`` fetches first, the lock a build takes and what
    happens once an output is complete (published, or nothing). The registry (``models/``) is moved the
    same way: ``models`` is one writer's turn at it, ``pull_models`` and ``pull_version`` bring it here.
    """

    def __init__(self, root: str | Path) -> None:
        self.folder = Path(root).resolve()
        self.uri = str(self.folder)

    def stage_dir(self, stage: str, key: str) -> Path:
        return self.folder / stage / key

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
            uri=self.url(f"{stage}/{key}"),
        )

    def url(self, relative: str) -> str | None:
        """Where other machines find ``relative`` (None: only on this machine's disk)."""
        return None

    def link(self, relative: str) -> str:
        """A link a person can open to ``relative``, a file under the root (a ``file://`` URI here)."""
        return (self.folder / relative).as_uri()

    @property
    def shared_uri(self) -> str | None:
        """The root as workers on other machines reach it (None: a folder on this machine)."""
        return None

    def lookup(self, stage: str, key: str, *, fetch: bool = True) -> StageResult | None:
        """The complete output for ``key``, or None when there is none. ``fetch``: bring its files into the
        local folder first (with a remote backend; False reads only the manifest, for plans)."""
        return self._local(stage, key)

    def localize(self, result: StageResult) -> StageResult:
        """``result`` (built here or on another machine) with its files in this store's local folder."""
        return result

    @contextlib.contextmanager
    def _locked(self, folder: Path, name: str) -> Iterator[Any]:
        """The lock on ``name`` in ``folder``: a file lock here (a remote backend adds the root's lease,
        which it yields)."""
        folder.mkdir(parents=True, exist_ok=True)
        with file_lock(folder / f".lock-{name}"):
            yield None

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
        with self._locked(self.folder / stage, key) as lease:
            existing = self.lookup(stage, key, fetch=False)
            if existing is not None and not force:
                return existing
            local = self._local(stage, key)
            if local is not None and not force:
                self._complete(stage, key, lease)  # built here by a run that died before completing it
                return local
            result = self._build_locked(stage, key, build, {"config": config, "inputs": dict(inputs)})
            self._complete(stage, key, lease, replace=force)
            return result

    def _complete(self, stage: str, key: str, lease: Any, replace: bool = False) -> None:
        """What follows a complete local output of ``key``: nothing on a local root (a remote backend
        publishes it)."""

    def _build_locked(self, stage: str, key: str, build: Callable[[Path], Built], provenance: dict[str, Any]) -> StageResult:
        """``build`` under this key's lock: into a temporary folder, manifest last, renamed into place."""
        parent = self.folder / stage
        # Leftovers of runs that died holding this key's lock (we hold it now, so none is live).
        for stale in [*parent.glob(f".tmp-{key}-*"), *parent.glob(f".old-{key}-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        shared = SHARED_SCRATCH.set(self.url(f"{stage}/.work-{key}"))
        before = memory.resident()
        try:
            started = time.time()
            built = build(tmp)
            info = built if isinstance(built, Info) else Info(**built)
            failpoint(stage, tmp / ".failpoint")
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

    # What housekeeping (``imgflow.pipeline.housekeeping``) reads and removes, where the truth is.

    def log_run(self, line: Mapping[str, Any]) -> None:
        """Append a finished run to the run log (``runs.jsonl``: one JSON line, so concurrent runs
        cannot interleave)."""
        with open(self.folder / RUNS, "a") as log:
            log.write(json.dumps(line, sort_keys=True) + "\n")

    def logged_runs(self) -> list[dict[str, Any]]:
        """Every logged run, oldest first."""
        path = self.folder / RUNS
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    def model_cards(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(model, version, card) of every registered version (its card alone, not the model)."""
        found = sorted(p for p in self.folder.glob("models/*/*/card.json") if not p.parent.name.startswith("."))
        return [(p.parent.parent.name, p.parent.name, json.loads(p.read_text())) for p in found]

    def outputs(self, stage: str) -> list[Stored]:
        """Every output of ``stage`` where the truth is, complete or left by a killed run (``.tmp-``,
        ``.old-``, ``.work-`` folders); damaged outputs set aside stay for a person to look at."""
        return self.local_outputs(stage)

    def local_outputs(self, stage: str) -> list[Stored]:
        """Every output of ``stage`` in the local folder (an object-store root's mirror: what this
        machine's files say, for ``verify``)."""
        folder = self.folder / stage
        found = []
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            if path.is_dir() and path.name != CORRUPT:
                size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                found.append(Stored(path.name, path, size, path.stat().st_mtime, (path / MANIFEST).is_file()))
        return found

    def in_use(self, stage: str, key: str) -> bool:
        """Whether a live build holds ``key``'s lock right now."""
        lock = self.folder / stage / f".lock-{key}"
        if not lock.exists():
            return False
        with open(lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False

    def remove(self, stage: str, key: str) -> None:
        """Remove the output (or leftover) ``key`` of ``stage``."""
        shutil.rmtree(self.folder / stage / key, ignore_errors=True)

    def pull_models(self, name: str | None = None) -> Path:
        """Bring the registry of model ``name`` (every model when None) into the local folder: the
        champion pointer, its history and every version not here yet (a remote backend's work; here
        it is already). Returns the local root, where ``imgflow.registry.versions`` reads it."""
        return self.folder

    def pull_version(self, name: str, version: str) -> Path:
        """The local folder of model ``name``'s ``version`` (fetched first by a remote backend, alone:
        what a worker of a batch prediction needs, not the whole registry)."""
        return self.folder / "models" / name / version

    @contextlib.contextmanager
    def models(self, name: str) -> Iterator[Path]:
        """Change the registry of model ``name``: one writer at a time (across machines for an
        object-store root, which pulls it first and pushes it back after). Yields the local root."""
        with self._locked(self.folder / "models" / name, "registry"):
            yield self.folder


FAILPOINT = "IMGFLOW_FAILPOINT"


def failpoint(point: str, marker: Path) -> None:
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
