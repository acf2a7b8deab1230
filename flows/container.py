"""The first process of a flow run's container: it runs the worker's command as its child and says why
that child ended when the kernel ended it.

A Docker or Kubernetes worker starts each flow run in a container with a memory limit. Past the limit
the kernel's out-of-memory killer ends the flow run's process with SIGKILL, and all Prefect can report
is "exited with status code -9 ... or by manual cancellation". This process stays small (it imports
nothing heavy until it has to) and outlives the child: when the child fails and the container's cgroup
has counted a new out-of-memory kill meanwhile, it marks the flow run Crashed with "out of memory (the
container's limit is 4 GiB)", over Prefect's generic message, and the container exits with 137. The
counter decides, not the child's signal: a worker's ``prefect flow-run execute`` runs the flow in a
process of its own, below this one's child. The rerun resumes like any crashed run: each finished
stage is cached and training restarts from its last committed epoch.

Signals to the container (``docker stop``, a pod's termination) are passed on to the child, so
Prefect's own handling of SIGTERM still applies. The image's entry point runs commands that start with
``python`` or ``prefect`` through here: ``python -m flows.container -- COMMAND...``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from imgflow.runtime.memlimit import CGROUP, memory_group

T = TypeVar("T")
FLOW_RUN = "PREFECT__FLOW_RUN_ID"  # set by every Prefect worker in the flow run's environment


def out_of_memory_message(limit: str) -> str:
    return f"out of memory (the container's limit is {limit})"


def supervise(command: list[str], cgroup: Path = CGROUP) -> int:
    """Run ``command`` to its end and return the container's exit status (128 + signal when killed);
    ``cgroup``: the container's cgroup mount."""
    before = memory_group(cgroup).oom_kills
    child = subprocess.Popen(command)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda number, frame: child.send_signal(number))
    code = child.wait()
    group = memory_group(cgroup)
    if before is None or group.oom_kills is None or group.oom_kills <= before:
        return code if code >= 0 else 128 - code
    # The kernel killed a process of the container meanwhile: the child, or the flow run's process below
    # it (`prefect flow-run execute` runs the flow in a process of its own, reports it Crashed with a
    # generic message and exits 0).
    message = out_of_memory_message(group.described_limit())
    run = os.environ.get(FLOW_RUN)
    if code == 0 and not (run and crashed(run)):
        return 0  # what was killed was not the run's: it finished
    print(f"imgflow: the flow run's process was killed: {message}", file=sys.stderr, flush=True)
    if run:
        mark_crashed(run, message)
    return 128 + signal.SIGKILL


def crashed(flow_run: str) -> bool:
    """Whether the flow run ended Crashed (as Prefect's runner reports a run whose process was killed)."""
    run = _prefect(lambda client: client.read_flow_run(UUID(flow_run)))
    return run.state is not None and run.state.is_crashed()


def mark_crashed(flow_run: str, message: str) -> None:
    """Set the flow run's state to Crashed with ``message`` (it has no process left to do it)."""
    from prefect.states import Crashed

    _prefect(lambda client: client.set_flow_run_state(UUID(flow_run), Crashed(message=message), force=True))


def _prefect(call: Callable[[Any], Awaitable[T]]) -> T:
    """One call of Prefect's client, to the API the worker gave the container; imported only now."""
    from prefect.client.orchestration import get_client

    async def run() -> T:
        async with get_client() as client:
            return await call(client)

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m flows.container -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    return supervise(args)


if __name__ == "__main__":
    sys.exit(main())
