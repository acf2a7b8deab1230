"""The CPU budget: cgroup v1 and v2 quotas read from fake /proc and /sys trees, the affinity mask, and
the override; and every pool that takes its size from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgflow.runtime import cpus
from imgflow.runtime.errors import ConfigError

V1_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
"""
V2_MOUNTS = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def _tree(tmp_path: Path, groups: str, mounts: str, files: dict[str, str]) -> tuple[Path, Path]:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(groups)
    (proc / "mountinfo").write_text(mounts)
    root = tmp_path / "root"
    for name, text in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return proc, root


def test_a_v2_quota_is_read_from_the_process_group(tmp_path: Path) -> None:
    proc, root = _tree(tmp_path, "0::/kubepods/pod1/box\n", V2_MOUNTS, {
        "/sys/fs/cgroup/cpu.max": "max 100000\n",
        "/sys/fs/cgroup/kubepods/pod1/box/cpu.max": "40000 100000\n",
    })
    assert cpus.cgroup_quota(proc, root) == pytest.approx(0.4)


def test_the_tightest_ancestor_wins(tmp_path: Path) -> None:
    # A pod limited to 1.5 cores, its container left unlimited: the pod's limit holds.
    proc, root = _tree(tmp_path, "0::/pod/box\n", V2_MOUNTS, {
        "/sys/fs/cgroup/pod/cpu.max": "150000 100000\n",
        "/sys/fs/cgroup/pod/box/cpu.max": "max 100000\n",
    })
    assert cpus.cgroup_quota(proc, root) == pytest.approx(1.5)


def test_a_v1_quota_is_read_where_the_cpu_controller_is_mounted(tmp_path: Path) -> None:
    proc, root = _tree(tmp_path, "4:memory:/other\n2:cpu,cpuacct:/slowbox-1\n0::/\n", V1_MOUNTS, {
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/slowbox-1/cpu.cfs_quota_us": "50000\n",
        "/sys/fs/cgroup/cpu,cpuacct/slowbox-1/cpu.cfs_period_us": "100000\n",
    })
    assert cpus.cgroup_quota(proc, root) == pytest.approx(0.5)


def test_a_container_sees_its_own_group_as_the_mount_root(tmp_path: Path) -> None:
    # Inside a container the hierarchy is mounted from the container's group: /proc/self/cgroup names
    # the full path, the mount's root field says which part of it is mounted.
    mounts = "29 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    proc, root = _tree(tmp_path, "0::/docker/abc\n", mounts, {"/sys/fs/cgroup/cpu.max": "200000 100000\n"})
    assert cpus.cgroup_quota(proc, root) == pytest.approx(2.0)


def test_no_quota_and_no_cgroup_filesystem_mean_no_limit(tmp_path: Path) -> None:
    proc, root = _tree(tmp_path, "0::/\n", V2_MOUNTS, {"/sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cpus.cgroup_quota(proc, root) is None
    assert cpus.cgroup_quota(tmp_path / "absent", root) is None


def test_the_budget_is_the_smaller_of_quota_and_affinity() -> None:
    assert cpus.CpuBudget(visible=8, affinity=8, quota=0.4).cores == pytest.approx(0.4)
    assert cpus.CpuBudget(visible=8, affinity=8, quota=0.4).threads == 1
    assert cpus.CpuBudget(visible=8, affinity=2, quota=4.0).cores == 2
    assert cpus.CpuBudget(visible=8, affinity=8, quota=2.5).threads == 3
    assert cpus.CpuBudget(visible=8, affinity=8, quota=None).threads == 8
    assert "quota 0.4 of 8 cores" in cpus.CpuBudget(visible=8, affinity=8, quota=0.4).source
    assert cpus.CpuBudget(visible=8, affinity=8, quota=0.4, override=3).threads == 3


def test_the_override_is_checked() -> None:
    assert cpus.budget({"IMGFLOW_CPUS": "0.5"}).cores == 0.5
    for bad in ("none", "0", "-1", "inf"):
        with pytest.raises(ConfigError, match="IMGFLOW_CPUS"):
            cpus.budget({"IMGFLOW_CPUS": bad})


def test_the_pools_follow_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgflow.training.inputs import _parallel_calls
    from imgflow.runtime.parallel import worker_count

    monkeypatch.delenv("IMGFLOW_WORKERS", raising=False)
    monkeypatch.setenv("IMGFLOW_CPUS", "0.4")
    assert worker_count() == 1 and _parallel_calls() == 1
    environ: dict[str, str] = {"TF_NUM_INTEROP_THREADS": "4"}
    cpus.limit_threads(environ)
    assert {name: environ[name] for name in cpus.tensorflow_environment()} == {
        "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "4", "OMP_NUM_THREADS": "1"}  # a user's value wins
    # A child process inherits the parent's sizing, and sizes what the parent set again from its own budget.
    monkeypatch.setenv("IMGFLOW_CPUS", "3")
    cpus.limit_threads(environ)
    assert (environ["TF_NUM_INTRAOP_THREADS"], environ["TF_NUM_INTEROP_THREADS"]) == ("3", "4")


def test_this_process_budget_is_within_what_it_sees() -> None:
    found = cpus.budget({})
    assert 0 < found.cores <= len(os.sched_getaffinity(0)) <= found.visible
