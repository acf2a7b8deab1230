"""imgflow.runtime.lifetime with real processes: a parent killed outright (SIGKILL to it alone, not its group)
leaves nothing running, whether it started the children itself or a library did."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from imgflow.runtime.lifetime import descendants, running, start_time
from tests.helpers import survivors_of_kill

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")


def _parent(script: str, ready: int) -> subprocess.Popen:
    """A Python process running ``script``, once ``ready`` processes run below it."""
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], start_new_session=True)
    deadline = time.monotonic() + 30
    while len(below := descendants([parent.pid])) < ready:
        assert parent.poll() is None and time.monotonic() < deadline, f"{len(below)} of {ready} processes started"
        time.sleep(0.05)
    return parent


def _wait_for(*files: Path) -> None:
    """Until every one of ``files`` exists: the processes that make them are ready, however slow the
    machine (a fixed sleep raced them on a CPU-limited one)."""
    deadline = time.monotonic() + 120
    while not all(file.exists() for file in files):
        assert time.monotonic() < deadline, f"not ready: {[str(file) for file in files if not file.exists()]}"
        time.sleep(0.05)


def test_a_child_that_follows_its_parent_dies_with_it(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    parent = _parent(
        f"""
        import sys, time
        from imgflow.runtime.lifetime import start_child
        code = "from imgflow.runtime.lifetime import follow_parent; follow_parent(); open({str(ready)!r}, 'w').close(); import time; time.sleep(120)"
        start_child([sys.executable, "-c", code])
        time.sleep(120)
        """,
        ready=1,
    )
    _wait_for(ready)  # the child has asked for the signal
    assert survivors_of_kill(parent, within=5) == {}


def test_the_data_stages_pool_workers_die_with_the_process_that_asked_for_them(tmp_path: Path) -> None:
    # Below the parent: the resource tracker, the forkserver and two workers busy with a long job, each
    # started (so its initializer has run) once it has made its file.
    files = [tmp_path / f"job-{index}" for index in range(2)]
    parent = _parent(
        f"""
        import time
        from imgflow.runtime.parallel import worker_pool
        with worker_pool(2, 2) as pool:
            jobs = [pool.submit(exec, f"open({{name!r}}, 'w').close(); import time; time.sleep(120)") for name in {[str(f) for f in files]!r}]
            time.sleep(120)
        """,
        ready=4,
    )
    _wait_for(*files)
    assert survivors_of_kill(parent, within=5) == {}


def test_the_watcher_stops_what_a_library_started_and_what_that_started() -> None:
    # Children that know nothing of their parent's end (a shell and its own child), like a server a
    # library starts; with the watcher, three processes below the parent.
    parent = _parent(
        """
        import subprocess, time
        from imgflow.runtime.lifetime import watch_descendants
        watch_descendants()
        subprocess.Popen(["sh", "-c", "sleep 120 & wait"])
        time.sleep(120)
        """,
        ready=3,
    )
    time.sleep(2)  # the watcher (polling every 0.2 s) has seen them, even on a slow machine
    assert survivors_of_kill(parent, within=10) == {}


def test_start_times_tell_a_process_from_a_zombie_and_from_none() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert start_time(child.pid) is not None and child.pid in descendants([os.getpid()])
    finally:
        child.kill()
    deadline = time.monotonic() + 5
    while start_time(child.pid) is not None:  # a zombie until waited for: no longer running
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child.wait()
    assert start_time(child.pid) is None and running({child.pid: 0}) == {}
