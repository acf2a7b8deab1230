"""imgflow.lifetime with real processes: a parent killed outright (SIGKILL to it alone, not its group)
leaves nothing running, whether it started the children itself or a library did."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from imgflow.lifetime import descendants, running, start_time
from imgflow.testing import survivors_of_kill

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")


def _parent(script: str, ready: int) -> subprocess.Popen:
    """A Python process running ``script``, once ``ready`` processes run below it."""
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], start_new_session=True)
    deadline = time.monotonic() + 30
    while len(below := descendants([parent.pid])) < ready:
        assert parent.poll() is None and time.monotonic() < deadline, f"{len(below)} of {ready} processes started"
        time.sleep(0.05)
    return parent


def test_a_child_that_follows_its_parent_dies_with_it() -> None:
    parent = _parent(
        """
        import sys, time
        from imgflow.lifetime import start_child
        code = "from imgflow.lifetime import follow_parent; follow_parent(); import time; time.sleep(120)"
        start_child([sys.executable, "-c", code])
        time.sleep(120)
        """,
        ready=1,
    )
    time.sleep(1)  # the child has asked for the signal by now (and if not, it exits on finding no parent)
    assert survivors_of_kill(parent, within=5) == {}


def test_the_data_stages_pool_workers_die_with_the_process_that_asked_for_them() -> None:
    # Below the parent: the resource tracker, the forkserver and two workers busy with a long job.
    parent = _parent(
        """
        import time
        from imgflow.parallel import worker_pool
        with worker_pool(2, 2) as pool:
            jobs = [pool.submit(time.sleep, 120) for _ in range(2)]
            time.sleep(120)
        """,
        ready=4,
    )
    time.sleep(1)  # the workers have run their initializer
    assert survivors_of_kill(parent, within=5) == {}


def test_the_watcher_stops_what_a_library_started_and_what_that_started() -> None:
    # Children that know nothing of their parent's end (a shell and its own child), like a server a
    # library starts; with the watcher, three processes below the parent.
    parent = _parent(
        """
        import subprocess, time
        from imgflow.lifetime import watch_descendants
        watch_descendants()
        subprocess.Popen(["sh", "-c", "sleep 120 & wait"])
        time.sleep(120)
        """,
        ready=3,
    )
    time.sleep(0.5)  # the watcher has seen them
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
