"""The artifact store: where every stage output lives, and the truth about what is already done.

Layout under the root (``artifacts/`` by default)::

    <stage>/<key>/            one complete output of a stage for one key
        manifest.json         written last: stage, key, config, input fingerprints, files and their
                              sha256, the stage's own info, and the output fingerprint
        ...                   the stage's files (documented in each stage module)
    <stage>/.tmp-<key>-<id>/  an output being written; never read, removed on the next attempt
    <stage>/.work-<key>/      scratch that survives a crash (training checkpoints), so a rerun of the
                              same key can resume; removed once the output is complete
    models/<name>/            the model registry (see ``imgflow.registry``)

An output is complete exactly when its ``manifest.json`` exists: the stage writes into a temporary
folder, the manifest goes in last, and one ``rename`` moves the folder into place. A crash at any point
leaves either the previous state or a complete output, never a partial one a later run could take for
complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgflow import __version__, memory
from imgflow.fingerprint import sha256_file, stable_hash, to_jsonable
from imgflow.results import Info, StageResult

MANIFEST = "manifest.json"
KEY_LENGTH = 20
# What a build returns: its stage's info model (a plain mapping for ad-hoc stages, e.g. in tests).
Built = Info | Mapping[str, Any]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=2, sort_keys=True) + "\n")
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes; the kernel drops it if the holder dies."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _file_table(folder: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


class ArtifactStore:
    """Stage outputs keyed by content, under one root folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def stage_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> StageResult | None:
        """The complete output for ``key``, or None when there is none."""
        manifest_path = self.stage_dir(stage, key) / MANIFEST
        if not manifest_path.is_file():
            return None
        manifest = json.loads(manifest_path.read_text())
        return StageResult(
            stage=stage,
            key=key,
            path=str(manifest_path.parent),
            fingerprint=manifest["fingerprint"],
            status="cached",
            info=manifest["info"],  # read back as the stage's info type
        )

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

        ``build`` returns the stage's info (see ``imgflow.results``). Runs that ask for the same key at once take turns on a lock: the first builds, the others wait
        and then find its output. ``force`` rebuilds even when an output exists, then swaps it in.
        """
        existing = self.lookup(stage, key)
        if existing is not None and not force:
            return existing
        parent = self.root / stage
        parent.mkdir(parents=True, exist_ok=True)
        with file_lock(parent / f".lock-{key}"):
            existing = self.lookup(stage, key)
            if existing is not None and not force:
                return existing
            return self._build_locked(stage, key, build, {"config": config, "inputs": dict(inputs)})

    def _build_locked(
        self, stage: str, key: str, build: Callable[[Path], Built], provenance: dict[str, Any]
    ) -> StageResult:
        """``build`` under this key's lock: into a temporary folder, manifest last, renamed into place."""
        parent = self.root / stage
        # Leftovers of runs that died holding this key's lock (we hold it now, so none is live).
        for stale in [*parent.glob(f".tmp-{key}-*"), *parent.glob(f".old-{key}-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            started = time.time()
            built = build(tmp)
            info = built if isinstance(built, Info) else Info(**built)
            _failpoint(stage, tmp)
            files = _file_table(tmp)
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
            final = self.stage_dir(stage, key)
            if final.exists():
                # A forced rebuild, or debris without a manifest (only complete folders are renamed
                # into place): move it aside in one rename, then put the new output in its place.
                retired = parent / f".old-{key}-{uuid.uuid4().hex[:8]}"
                os.rename(final, retired)
                shutil.rmtree(retired, ignore_errors=True)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            memory.release()  # what the build freed, for the stages after it
        shutil.rmtree(parent / f".work-{key}", ignore_errors=True)
        result = self.lookup(stage, key)
        assert result is not None
        return result.with_status("ran")


FAILPOINT = "IMGFLOW_FAILPOINT"


def _failpoint(stage: str, tmp: Path) -> None:
    """Crash-test hook: with IMGFLOW_FAILPOINT=<stage>, stop here (files written, no manifest yet).

    Writes ``<tmp>/.failpoint`` and sleeps, so a test can SIGKILL the run at the worst moment: after
    the stage wrote all its files but before the manifest that would make them count.
    """
    if os.environ.get(FAILPOINT) == stage:
        (tmp / ".failpoint").touch()
        time.sleep(600)


def scratch_dir(out_dir: Path) -> Path:
    """The crash-surviving scratch folder of the build writing into ``out_dir`` (a ``.tmp-<key>-<id>``).

    Unlike ``out_dir``, it outlives a killed run, so the next build of the same key can pick up where
    the last one stopped; the store removes it once the output is complete.
    """
    key = out_dir.name.removeprefix(".tmp-").rsplit("-", 1)[0]
    folder = out_dir.parent / f".work-{key}"
    folder.mkdir(exist_ok=True)
    return folder


@dataclass(frozen=True)
class Stage:
    """One arrow of the pipeline: a name, a code version, and a function that builds its output.

    ``build(out_dir, config, inputs)`` receives the upstream results by name and returns its info model
    (counts, metrics: ``imgflow.results``) that lands in the manifest and the run summary. Long builds
    report progress with ``imgflow.progress.report``. Bump ``version`` whenever a change to the stage's
    code changes its output: it is part of the key.
    """

    name: str
    version: str
    build: Callable[[Path, Any, Mapping[str, StageResult]], Built]

    def key(self, config: Any, inputs: Mapping[str, StageResult | str]) -> str:
        fingerprints = {
            name: value.fingerprint if isinstance(value, StageResult) else value
            for name, value in inputs.items()
        }
        return stable_hash([self.name, self.version, config, fingerprints])[:KEY_LENGTH]

    def run(
        self, store: ArtifactStore, config: Any, inputs: Mapping[str, StageResult | str], *, force: bool = False
    ) -> StageResult:
        key = self.key(config, inputs)
        results = {n: v for n, v in inputs.items() if isinstance(v, StageResult)}
        return store.build(
            self.name,
            key,
            lambda out_dir: self.build(out_dir, config, results),
            config=config,
            inputs={n: v.fingerprint if isinstance(v, StageResult) else v for n, v in inputs.items()},
            force=force,
        )
