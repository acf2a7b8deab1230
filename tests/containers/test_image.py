"""imgflow's image run alone, as `docker run` runs it: the bundled sample promoted by a non-root user
with no dev tools in the image, the pools sized to the container's CPU limit, and a run past its
memory limit killed by the kernel and saying so."""

from __future__ import annotations

import json
import subprocess

import pytest

pytestmark = [pytest.mark.containers, pytest.mark.slow]


def docker(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_the_image_promotes_the_sample_within_its_cpu_limit_as_a_non_root_user(image: str) -> None:
    """Slow by nature (about 2 minutes): a whole run in a container of one CPU, on its own temporary
    Prefect server, with no network."""
    done = docker("run", "--rm", "--network", "none", "--cpus", "1", image, "run", "--epochs", "2", "--min-accuracy", "0.5", "--json")
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["decision"] == "promoted"
    # The CPU limit as Docker sets it (the cgroup's CFS quota), not a variable: one core, one thread.
    assert summary["cpus"]["cores"] == pytest.approx(1) and summary["cpus"]["threads"] == 1, summary["cpus"]
    assert "quota 1" in summary["cpus"]["source"], summary["cpus"]

    who = docker("run", "--rm", "--network", "none", image, "sh", "-c", "id -u; python -c 'import pytest' 2>&1 | tail -1; ls /opt/imgflow/bin")
    uid, pytest_import, programs = who.stdout.split("\n", 2)
    assert uid == "10001" and "No module named 'pytest'" in pytest_import, who.stdout  # no dev or test extras
    assert "imgflow" in programs.split() and "pip" not in programs.split(), programs


def test_a_run_past_its_memory_limit_is_killed_by_the_kernel_and_says_so(image: str) -> None:
    """A run in 400 MiB: importing TensorFlow alone takes more, the kernel kills the run's process, and
    the container's first process (flows.container) says why, with the limit, and exits with 137."""
    done = docker("run", "--rm", "--network", "none", "--memory", "400m", "--memory-swap", "400m", image,
                  "python", "-m", "flows.cli", "run", "--epochs", "2")
    assert done.returncode == 137, (done.returncode, done.stderr[-3000:])
    assert "imgflow: the flow run's process was killed: out of memory (the container's limit is 400 MiB)" in done.stderr, done.stderr[-3000:]
