"""A container's memory limit, and whether the kernel has killed a process in it for memory.

A container started with ``--memory 4g`` (or a pod with a memory limit) runs in a cgroup whose limit
the kernel enforces: past it, the out-of-memory killer ends the largest process with SIGKILL. That
process cannot say why it ended; whoever waits for it can, from the group's own counters: cgroup v2's
``memory.max`` and ``memory.events`` (``oom_kill``), or cgroup v1's ``memory.limit_in_bytes`` and
``memory.oom_control`` (``oom_kill``, Linux 4.13 and later). Inside a container the group is the root
of the cgroup mount.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
UNLIMITED = 2**60  # cgroup v1 writes "no limit" as the largest page-aligned number, about 2**63


@dataclass(frozen=True)
class MemoryGroup:
    """The memory limit of the group this process runs in (None: none), and how many of its
    processes the kernel has killed for memory so far (None: the counter cannot be read)."""

    limit: int | None
    oom_kills: int | None

    def described_limit(self) -> str:
        return "none" if self.limit is None else gibibytes(self.limit)


def memory_group(root: Path = CGROUP) -> MemoryGroup:
    """Read the group's limit and out-of-memory kill count (``root``: the cgroup mount, a folder laid
    out like one in tests)."""
    if (root / "memory.max").is_file():  # v2
        raw = _read(root / "memory.max")
        limit = None if raw in (None, "max") else int(raw)
        return MemoryGroup(limit, _counter(root / "memory.events", "oom_kill"))
    raw = _read(root / "memory" / "memory.limit_in_bytes")
    limit = None if raw is None or int(raw) >= UNLIMITED else int(raw)
    return MemoryGroup(limit, _counter(root / "memory" / "memory.oom_control", "oom_kill"))


def gibibytes(size: int) -> str:
    """A byte count as people write container limits: 4 GiB, 1.5 GiB, 512 MiB."""
    if size >= 2**30:
        return f"{size / 2**30:.4g} GiB"
    return f"{size / 2**20:.4g} MiB"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _counter(path: Path, name: str) -> int | None:
    text = _read(path)
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return int(value)
    return None
