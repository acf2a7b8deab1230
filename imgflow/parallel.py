"""All cores for the data stages: an ordered map of a function over chunks, in worker processes.

Decoding images is CPU work that Python's threads cannot share, so the stages hand chunks of records
(row groups of a Parquet table, named by path and index: never the data) to a process pool and
assemble the results in chunk order, which makes a parallel run's output byte-identical to a serial
one's. ``IMGFLOW_WORKERS`` sets the number of processes (default: the CPUs this process may use);
with 1, or a single chunk, everything runs in this process.

The pool's processes come from a ``forkserver``: a clean interpreter that forks the workers, so they
never inherit the threads of the process that asked (Prefect's event loop, Arrow's and TensorFlow's
thread pools), which plain ``fork`` would copy in whatever state their locks were.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from imgflow.errors import ConfigError

T = TypeVar("T")
WORKERS = "IMGFLOW_WORKERS"


def worker_count() -> int:
    """How many processes the data stages may use: ``IMGFLOW_WORKERS``, else every CPU we may run on."""
    value = os.environ.get(WORKERS)
    if value is None:
        return len(os.sched_getaffinity(0))
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{WORKERS}={value!r}: expected a whole number of processes, 1 or more")
    return int(value)


@contextmanager
def worker_pool(jobs: int, workers: int | None = None) -> Iterator[ProcessPoolExecutor | None]:
    """A process pool for up to ``jobs`` jobs (None when one process is enough: then work runs here).
    Starting one costs about half a second, so a stage with several parallel passes keeps one."""
    workers = min(worker_count() if workers is None else workers, jobs)
    if workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        yield pool


def ordered_map(
    function: Callable[..., T], jobs: Sequence[tuple[Any, ...]], pool: ProcessPoolExecutor | None | bool = True
) -> Iterator[T]:
    """``function(*job)`` for every job, yielded in the jobs' order as they finish: on ``pool``, on a
    pool of its own (True, the default), or here (None). ``function`` must be importable (a
    module-level name): the worker processes import it."""
    if pool is True:
        with worker_pool(len(jobs)) as own:
            yield from ordered_map(function, jobs, own)
        return
    if pool is None or pool is False:
        for job in jobs:
            yield function(*job)
        return
    futures = [pool.submit(function, *job) for job in jobs]
    try:
        for future in futures:
            yield future.result()
    finally:
        for future in futures:
            future.cancel()
