"""The CPU time this process really has, and every pool sized from it.

A container with a CPU limit (a Kubernetes pod, a CI runner, a work-pool worker) sees every core of its
host: ``os.cpu_count()`` and the affinity mask say 2 or 64, while the kernel's CFS quota lets it run for
only a fraction of that. Pools sized from the visible cores then oversubscribe the quota: the threads
take turns being throttled for the rest of each 100 ms period, and a synchronous step waits for the
slowest of them. Every pool imgflow starts (TensorFlow's intra- and inter-op threads, tf.data's
parallel maps, the data stages' worker processes, a local Dask cluster, ONNX Runtime's threads) is sized
from ``budget()`` instead: the smaller of the affinity mask and the cgroup quota (``cpu.max`` in cgroup
v2, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1, the tightest of the process's group and its
ancestors). ``IMGFLOW_CPUS`` overrides it, for a limit the kernel does not show.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from imgflow.runtime.errors import ConfigError

OVERRIDE = "IMGFLOW_CPUS"
SIZED = "IMGFLOW_SIZED_THREADS"  # the variables limit_threads set itself (a user's own are left alone)


@dataclass(frozen=True)
class CpuBudget:
    """What the process may use: ``cores`` of CPU time (a fraction under a quota below one core), and
    where that figure came from."""

    visible: int  # the cores the machine shows (os.cpu_count())
    affinity: int  # the cores the process may be scheduled on
    quota: float | None  # cores' worth of CPU time the cgroup quota allows; None: no quota
    override: float | None = None  # IMGFLOW_CPUS

    @property
    def cores(self) -> float:
        if self.override is not None:
            return self.override
        return min(float(self.affinity), self.quota) if self.quota is not None else float(self.affinity)

    @property
    def threads(self) -> int:
        """Threads (or processes) that together can use the whole budget and no more than it."""
        return max(1, math.ceil(self.cores - 1e-9))

    @property
    def source(self) -> str:
        """Which limit decided ``cores``, in words, for the run's hardware plan."""
        if self.override is not None:
            return f"{OVERRIDE}={self.override:g}"
        if self.quota is not None and self.quota < self.affinity:
            return f"cgroup CPU quota {self.quota:g} of {self.affinity} cores"
        return f"{self.affinity} of {self.visible} cores" if self.affinity < self.visible else f"{self.affinity} cores"

    def as_dict(self) -> dict[str, object]:
        return {"cores": round(self.cores, 3), "threads": self.threads, "visible": self.visible, "source": self.source}


def budget(environ: MutableMapping[str, str] | None = None, proc: Path = Path("/proc/self")) -> CpuBudget:
    """This process's CPU budget (see the module docstring)."""
    environ = os.environ if environ is None else environ
    visible = os.cpu_count() or 1
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else visible
    override = None
    if value := environ.get(OVERRIDE):
        try:
            override = float(value)
        except ValueError:
            override = -1.0
        if not 0 < override < math.inf:
            raise ConfigError(f"{OVERRIDE}={value!r}: expected the number of cores this process may use, above 0 (e.g. 0.5 or 2)")
    return CpuBudget(visible, affinity, cgroup_quota(proc), override)


def threads() -> int:
    """The number of threads or worker processes a pool gets by default: ``budget().threads``."""
    return budget().threads


def cgroup_quota(proc: Path = Path("/proc/self"), root: Path = Path("/")) -> float | None:
    """The tightest CFS quota over the process's cgroup and its ancestors, in cores (quota / period);
    None when there is none or the cgroup filesystem cannot be read. ``root`` prefixes the mount
    points (tests lay a fake ``/sys/fs/cgroup`` out under a folder)."""
    try:
        groups = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    limits = [limit for top, folder, version in _cpu_folders(groups, mounts, root) for limit in _limits(top, folder, version)]
    return min(limits) if limits else None


def _cpu_folders(groups: list[str], mounts: list[str], root: Path) -> Iterator[tuple[Path, Path, int]]:
    """Each mounted cgroup folder that holds this process's CPU controller (v1 ``cpu``, or v2): the
    mount point, the process's folder below it, and the hierarchy's version. A container sees its own
    group as the mount's root, so the path in ``/proc/self/cgroup`` is taken relative to the mount's
    root (``mountinfo``'s fourth field)."""
    paths: dict[str, str] = {}  # controller ("" for v2) -> the process's path in that hierarchy
    for line in groups:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                paths[controller] = parts[2]
    for line in mounts:
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        fstype, options = fields[dash + 1], fields[dash + 3].split(",") if len(fields) > dash + 3 else []
        mount_root, mount_point = fields[3], fields[4]
        if fstype == "cgroup2" and "" in paths:
            path, version = paths[""], 2
        elif fstype == "cgroup" and "cpu" in options and "cpu" in paths:
            path, version = paths["cpu"], 1
        else:
            continue
        relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else "."
        top = root / mount_point.lstrip("/")
        yield top, top / ("" if relative == "." else relative), version


def _limits(top: Path, folder: Path, version: int) -> Iterator[float]:
    """The quota, in cores, of ``folder`` and each folder above it, up to the mount point ``top``,
    that sets one."""
    while True:
        try:
            if version == 2:
                quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
                if quota != "max":
                    yield int(quota) / int(period or 100_000)
            else:
                quota_us = int((folder / "cpu.cfs_quota_us").read_text())
                if quota_us > 0:
                    yield quota_us / int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            pass
        if folder == top or top not in folder.parents:
            return
        folder = folder.parent


def tensorflow_environment(threads_: int | None = None) -> dict[str, str]:
    """The environment variables that size TensorFlow's (and OpenMP's) thread pools to the budget."""
    n = str(threads_ or threads())
    return {"TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": n, "OMP_NUM_THREADS": n}


def limit_threads(environ: MutableMapping[str, str] | None = None) -> None:
    """Size TensorFlow's thread pools to the budget, for this process and those it starts, unless the
    environment already sizes them (a value the user set wins). Call it before TensorFlow is imported:
    its pools are made once, with the process's first TensorFlow operation.

    The names it sets are listed in ``SIZED``, so that a process started from this one (which inherits
    them) sizes them again from its own budget: it may run inside another quota."""
    environ = os.environ if environ is None else environ
    ours = set(filter(None, environ.get(SIZED, "").split(",")))
    for name, value in tensorflow_environment().items():
        if name not in environ or name in ours:
            environ[name] = value
            ours.add(name)
    environ[SIZED] = ",".join(sorted(ours))
