"""Helpers for tests: what a killed run left behind, and who still uses a folder. (Data for tests and
benchmarks alike is ``imgflow.data.synthetic``'s, a CPU quota ``imgflow.runtime.quota``'s, and a real
Prefect server ``flows.server.prefect_server``: the library never starts Prefect.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from imgflow.runtime.lifetime import descendants, running


def survivors_of_kill(process: subprocess.Popen, within: float) -> dict[int, int]:
    """SIGKILL ``process`` alone (not its group: what the out-of-memory killer does) and return those
    of its descendants, noted just before, still running ``within`` seconds later (pid: start time)."""
    below = descendants([process.pid])
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + within
    while (left := running(below)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def processes_using(*paths: Path) -> dict[int, str]:
    """Every process on the machine (but this one) that uses any of ``paths``: has it in its environment
    (``PREFECT_HOME=...``) or command line, works in it or holds a file open under it; pid: command line.
    Asks the machine, not a process tree noted beforehand: it finds what left the run's tree, and what
    started in another session."""
    needles = [str(path.resolve()) for path in paths]

    def uses(folder: Path) -> bool:
        text = (folder / "environ").read_bytes() + b"\0" + (folder / "cmdline").read_bytes()
        if any(needle.encode() in text for needle in needles):
            return True
        links = [folder / "cwd", *(folder / "fd").iterdir()]
        return any(os.readlink(link).startswith(tuple(needles)) for link in links if link.is_symlink())

    found = {}
    for folder in Path("/proc").iterdir():
        if not folder.name.isdigit() or int(folder.name) == os.getpid():
            continue
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):  # it ended while we looked
            if (folder / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z" and uses(folder):
                found[int(folder.name)] = (folder / "cmdline").read_text().replace("\0", " ")
    return found


def left_behind(*paths: Path, within: float) -> dict[int, str]:
    """``processes_using(*paths)`` once none is left, or ``within`` seconds have passed."""
    deadline = time.monotonic() + within
    while (left := processes_using(*paths)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


