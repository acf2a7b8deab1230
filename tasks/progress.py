"""Where ``imgflow.runtime.progress`` reports go inside a Prefect task: a progress artifact in the UI, a log line
now and then, and, when the run's output is a terminal (``imgflow run`` by hand), a progress bar.

The artifact and the log are updated at most every ``every`` seconds (and at the end): each update is
a call to the Prefect API, and a clean of a million images reports a thousand times.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from imgflow.runtime.progress import listening


class _TaskProgress:
    def __init__(self, name: str, every: float) -> None:
        self.name = name
        self.every = every
        self.logger = get_run_logger()
        self.artifact: UUID | None = None
        self.last = 0.0
        self.bar: Progress | None = None
        self.bar_task: TaskID | None = None

    def __call__(self, done: int, total: int | None, unit: str) -> None:
        if self.bar is not None:
            if self.bar_task is None:
                self.bar_task = self.bar.add_task(f"{self.name} ({unit})", total=total)
            self.bar.update(self.bar_task, completed=done, total=total)
        finished = total is not None and done >= total
        now = time.monotonic()
        if now - self.last < self.every and not finished:
            return
        self.last = now
        self.logger.info("%s: %d%s %s", self.name, done, f"/{total}" if total else "", unit)
        if total:
            percent = min(100.0, 100.0 * done / total)
            if self.artifact is None:
                key = re.sub(r"[^a-z0-9-]+", "-", f"imgflow-progress-{self.name}".lower())
                # called from sync code: a UUID (Prefect's sync_compatible types it as a coroutine too)
                self.artifact = cast("UUID", create_progress_artifact(percent, key=key, description=f"{self.name}: {unit} done"))
            else:
                update_progress_artifact(self.artifact, percent)


@contextmanager
def task_progress(name: str, every: float = 2.0) -> Iterator[None]:
    """Report the progress of the work inside this block (see the module docstring)."""
    listener = _TaskProgress(name, every)
    if sys.stderr.isatty():
        listener.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
        listener.bar.start()
    try:
        with listening(listener):
            yield
    finally:
        if listener.bar is not None:
            listener.bar.stop()
