"""A run's processes end with the run, however the run ends.

A run starts processes: Prefect's temporary server, the data stages' worker pools (and the forkserver
they come from), a local Dask cluster's workers, multi-worker training workers. A run killed with
SIGKILL (the out-of-memory killer sends it to one process, not to its group) cannot stop them, and
left alone they run on as orphans, holding ports and memory. Two mechanisms, both Linux's:

- ``die_with(pid)``, called in a process we start ourselves (the pools' workers, the training
  launcher's workers): a thread waits on a pidfd of the process it belongs to and ends this one the
  moment that one ends. (Not ``PR_SET_PDEATHSIG``: it fires when the thread that forked the child
  ends, and a pool's workers are forked by the forkserver, which outlives the run: each worker holds
  the pipe whose closing would end it.) ``start_child`` starts a Python child that does so.
- ``watch_descendants()``, for the processes libraries start where we cannot reach in (Prefect's
  ``SubprocessASGIServer``, Dask's nannies, and anything a stage starts): a small watcher process
  (``python -m imgflow.runtime.lifetime PID``) notes this process's descendants from ``/proc`` every
  ``POLL`` seconds and, once this process has gone, stops the ones still running and theirs (SIGTERM,
  then SIGKILL after ``GRACE`` seconds). A direct child started and orphaned within the same ``POLL``
  escapes it: what we start ourselves uses ``die_with`` too.

A SIGKILL to the run's whole process group (``timeout -s KILL``, ``kill -9 -- -PGID``, a CI runner's
cancel) ends every process in the group at once, and nothing in it can act afterwards. So whatever
must act after that lives outside the group: the watcher starts in a session of its own, and so does
Prefect's temporary server (``flows.server``), which dies with the run through ``die_with``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

POLL = 0.2
GRACE = 5.0
PARENT = "IMGFLOW_DIE_WITH"  # set by start_child: the pid a child started by us dies with
_watcher: subprocess.Popen | None = None


def die_with(pid: int) -> None:
    """End this process (status 1, at once) when process ``pid`` ends; now if it already has. Does
    nothing where there are no pidfds (not Linux)."""
    if not hasattr(os, "pidfd_open"):
        return
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)

    def wait() -> None:
        select.select([handle], [], [])  # readable once the process has ended
        os._exit(1)

    threading.Thread(target=wait, name=f"die with {pid}", daemon=True).start()


def follow_parent() -> None:
    """First thing in a program ``start_child`` may start: die with the process that started it."""
    parent = os.environ.pop(PARENT, None)  # not for the processes this one starts
    if parent is not None:
        die_with(int(parent))


def start_child(command: Sequence[str], **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(command)`` for a program that calls ``follow_parent()`` as it starts."""
    env = {**(popen.pop("env", None) or os.environ), PARENT: str(os.getpid())}
    return subprocess.Popen(command, env=env, **popen)


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), telling it from a later process with its pid;
    None when there is no such process, or it has ended and awaits its parent (a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name before ")" may hold anything
    return None if fields[0] == "Z" else int(fields[19])  # fields 3 (state) and 22 (start time)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (any of its threads), from ``/proc``."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                found.extend(int(child) for child in (task / "children").read_text().split())
            except (FileNotFoundError, ProcessLookupError):  # the thread ended while we looked
                continue
    except (FileNotFoundError, ProcessLookupError):
        return []
    return found


def descendants(roots: Iterable[int]) -> dict[int, int]:
    """Every process below ``roots`` (not the roots), with its start time."""
    found: dict[int, int] = {}
    pending = [child for root in roots for child in children(root)]
    while pending:
        pid = pending.pop()
        started = start_time(pid)
        if started is not None and pid not in found:
            found[pid] = started
            pending.extend(children(pid))
    return found


def running(processes: dict[int, int]) -> dict[int, int]:
    """Those of ``processes`` (pid: start time) still running."""
    return {pid: started for pid, started in processes.items() if start_time(pid) == started}


def stop(processes: dict[int, int], grace: float = GRACE) -> list[int]:
    """SIGTERM the ``processes`` (pid: start time) still running, SIGKILL those still there after
    ``grace`` seconds; return the pids signalled."""
    signalled = list(running(processes))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in running({pid: processes[pid] for pid in signalled}):
            with contextlib.suppress(ProcessLookupError):  # it ended since we looked
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while sig == signal.SIGTERM and running({pid: processes[pid] for pid in signalled}):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    return signalled


def watch(parent: int, poll: float = POLL) -> list[int]:
    """The watcher's work: note ``parent``'s descendants until it ends, then stop those left (and
    theirs). Returns the pids it had to stop."""
    known: dict[int, int] = {}
    while os.getppid() == parent:  # when it ends, this process is handed to another parent
        known.update(descendants([parent]))
        time.sleep(poll)
    known.pop(os.getpid(), None)
    known.update(descendants(running(known)))  # what they started since the last look
    # Some end by themselves with the parent (the pools' forkserver, Dask's workers): a moment for them.
    deadline = time.monotonic() + 5 * poll
    while running(known) and time.monotonic() < deadline:
        time.sleep(0.05)
    return stop(known)


def watch_descendants() -> None:
    """Start, once per process, the watcher that stops this process's descendants when it ends."""
    global _watcher
    if _watcher is None and sys.platform.startswith("linux"):
        # A session of its own: out of the reach of a signal to the run's group, SIGKILL included.
        command = [sys.executable, "-m", "imgflow.runtime.lifetime", str(os.getpid())]
        _watcher = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)


def main(argv: Sequence[str]) -> int:
    # A Ctrl-C or a closed terminal ends the run: the watcher stays to stop what the run left.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stopped = watch(int(argv[0]))
    if stopped:
        print(f"imgflow: the run ended; stopped {len(stopped)} process(es) it had left running: {stopped}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
