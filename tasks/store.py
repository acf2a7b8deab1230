"""The artifact store a task works in. A task takes its root as a parameter (a string: what Prefect
records and hashes), and a process opens each root once, here (``imgflow.store.roots.open_store``
chooses its backend); the command line's commands that are not runs open theirs here too."""

from __future__ import annotations

import functools

from imgflow.store.artifacts import ArtifactStore
from imgflow.store.roots import open_store


@functools.lru_cache(maxsize=8)
def store_at(root: str) -> ArtifactStore:
    """The store at ``root`` (a folder or an object-store URI), opened once per process."""
    return open_store(root)
