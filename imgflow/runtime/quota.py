"""A CPU quota for child processes, made here: a fresh cgroup whose processes share a fraction of the
machine's CPU time, the way a container with a CPU limit runs (its processes still see every core).
For measuring and testing imgflow as an ordinary machine runs it (``benchmarks/cpu_quota.py``, the
first-run test); needs root and a writable cgroup filesystem, and says why not otherwise."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class QuotaUnavailable(RuntimeError):
    """No CPU-quota control group can be made here (not root, no cgroup filesystem, read-only)."""


@contextmanager
def cpu_quota(cores: float) -> Iterator[Callable[[], None]]:
    """A fresh cgroup whose processes share ``cores`` of CPU time (a CFS quota per 100 ms), the way a
    container with a CPU limit runs: its processes still see every core. Yields the ``preexec_fn``
    that moves a starting ``subprocess`` into it; the group is removed once its processes are gone.
    Raises ``QuotaUnavailable`` with the reason where no group can be made."""
    period = 100_000
    quota = max(1000, int(cores * period))
    name = f"imgflow-quota-{os.getpid()}-{time.monotonic_ns()}"
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    try:
        if v2.is_file():
            control = Path("/sys/fs/cgroup/cgroup.subtree_control")
            if "cpu" not in control.read_text().split():
                control.write_text("+cpu")
            folder = Path("/sys/fs/cgroup") / name
            folder.mkdir()
            (folder / "cpu.max").write_text(f"{quota} {period}")
            procs = folder / "cgroup.procs"
        elif Path("/sys/fs/cgroup/cpu").is_dir():
            folder = Path("/sys/fs/cgroup/cpu") / name
            folder.mkdir()
            (folder / "cpu.cfs_period_us").write_text(str(period))
            (folder / "cpu.cfs_quota_us").write_text(str(quota))
            procs = folder / "tasks"
        else:
            raise QuotaUnavailable("no cgroup CPU controller is mounted under /sys/fs/cgroup")
    except OSError as error:
        raise QuotaUnavailable(f"cannot make a CPU-quota cgroup under /sys/fs/cgroup: {error}") from None

    def enter() -> None:
        procs.write_text(str(os.getpid()))

    try:
        yield enter
    finally:
        deadline = time.monotonic() + 10
        while procs.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(OSError):
            folder.rmdir()
