"""Scratch folders of a build that outlive a killed run (training checkpoints), so the next build of the
same key resumes; and the scratch every worker of a cluster reaches (on an object-store root, a URI
there). The artifact store (``imgflow.store.artifacts``) removes both once the output is published."""

from __future__ import annotations

import contextvars
from pathlib import Path


def scratch_dir(out_dir: Path) -> Path:
    """The crash-surviving scratch folder of the build writing into ``out_dir`` (a ``.tmp-<key>-<id>``).

    Unlike ``out_dir``, it outlives a killed run, so the next build of the same key can pick up where
    the last one stopped; the store removes it once the output is complete.
    """
    key = out_dir.name.removeprefix(".tmp-").rsplit("-", 1)[0]
    folder = out_dir.parent / f".work-{key}"
    folder.mkdir(exist_ok=True)
    return folder


SHARED_SCRATCH: contextvars.ContextVar[str | None] = contextvars.ContextVar("shared_scratch", default=None)


def remote_scratch() -> str | None:
    """The URI of the running build's ``<stage>/.work-<key>/`` on an object-store root (removed once
    its output is published); None on a local root."""
    return SHARED_SCRATCH.get()


def shared_scratch(out_dir: Path) -> str:
    """Scratch for the build writing into ``out_dir`` that every worker of a cluster can reach: on an
    object-store root the URI of ``<stage>/.work-<key>/`` there (removed once the output is
    published), else ``<out_dir>/.shared`` (a local root reaches only the workers that share its
    disk). Pyarrow reads and writes either."""
    remote = remote_scratch()
    if remote is not None:
        return remote
    folder = out_dir / ".shared"
    folder.mkdir(exist_ok=True)
    return str(folder)
