"""Opening an artifact root: the one place that decides which backend a root gets, a local folder
(``imgflow.store.artifacts.ArtifactStore``) or an object-store URI worked through a local mirror
(``imgflow.store.remote.RemoteArtifactStore``). Everything above holds an opened store and asks it, never
the root's form."""

from __future__ import annotations

from pathlib import Path

from imgflow.store.artifacts import ArtifactStore
from imgflow.store.objectstore import is_remote, mirror_dir
from imgflow.store.remote import RemoteArtifactStore


def open_store(root: str | Path, mirror: Path | None = None) -> ArtifactStore:
    """The store at ``root``: a folder, or ``s3://bucket/prefix`` (any URI pyarrow knows) with its local
    ``mirror`` (default: a folder per root under this machine's cache, ``objectstore.mirror_dir``)."""
    if is_remote(root):
        return RemoteArtifactStore(str(root), mirror)
    return ArtifactStore(root)


def canonical_root(root: str | Path) -> str:
    """``root`` as a run records it: a URI as written, a folder as its absolute path."""
    return str(root) if is_remote(root) else str(Path(root).resolve())


def local_folder(root: str | Path) -> Path:
    """This machine's folder of ``root`` without opening it (an object-store root's mirror): where a
    crash log goes even when the root cannot be reached."""
    return mirror_dir(str(root)) if is_remote(root) else Path(root)
