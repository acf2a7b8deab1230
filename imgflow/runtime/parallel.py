"""All cores for the data stages: an ordered map of a function over chunks, in worker processes.

Decoding images is CPU work that Python's threads cannot share, so the stages hand chunks of records
(row groups of a Parquet table, named by path and index: never the data) to a process pool and
assemble the results in chunk order, which makes a parallel run's output byte-identical to a serial
one's. ``IMGFLOW_WORKERS`` sets the number of processes (default: the CPU time this process has,
``imgflow.runtime.cpus``: under a quota of 0.4 CPU, one);
with 1, or a single chunk, everything runs in this process.

The pool's processes come from a ``forkserver``: a clean interpreter that forks the workers, so they
never inherit the threads of the process that asked (Prefect's event loop, Arrow's and TensorFlow's
thread pools), which plain ``fork`` would copy in whatever state their locks were. The server imports
the program's main module and the worker functions' libraries once (``PRELOAD``), so every pool's
workers start ready instead of each importing them (about half a second); ``start_forkserver`` starts
it early, while the program goes on with its own start. The workers end the moment the process that
asked for them does, however it ends (``imgflow.runtime.lifetime.die_with``); the server, once they have.

``cluster_pool`` is the same for work that may leave the machine: with ``IMGFLOW_TASK_RUNNER=dask``
(a local Dask cluster of processes) or ``dask:ADDRESS`` (an existing scheduler) it is a Dask executor,
so adding workers adds throughput; its jobs then name their data by URIs every worker can reach.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import forkserver
from typing import Any, TypeVar

from imgflow.runtime import cpus
from imgflow.runtime.errors import ConfigError
from imgflow.runtime.lifetime import die_with

T = TypeVar("T")
WORKERS = "IMGFLOW_WORKERS"
RUNNER = "IMGFLOW_TASK_RUNNER"
# What the forkserver imports before forking workers: the program (as multiprocessing does by default)
# and the libraries below the stages that the stages' worker functions use.
PRELOAD = [
    "__main__",
    "imgflow.store.artifacts",
    "imgflow.data.cleantable",
    "imgflow.data.recordkeys",
    "imgflow.data.images",
    "imgflow.data.tfrecord",
]


def _forkserver() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # read when the server starts
    return context


def start_forkserver() -> None:
    """Start the server the worker pools fork from now, without waiting for its imports: a program
    that will run data stages calls this first thing, so the imports overlap with its own."""
    _forkserver()
    forkserver.ensure_running()


def worker_count() -> int:
    """How many processes the data stages may use: ``IMGFLOW_WORKERS``, else the CPU budget's threads."""
    value = os.environ.get(WORKERS)
    if value is None:
        return cpus.threads()
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
    with ProcessPoolExecutor(max_workers=workers, mp_context=_forkserver(), initializer=die_with, initargs=(os.getpid(),)) as pool:
        yield pool


def dask_address() -> str | None:
    """With ``IMGFLOW_TASK_RUNNER=dask[:ADDRESS]``, the scheduler's address ("" for a local cluster);
    None otherwise (the flows read the same variable for their task runner)."""
    kind, _, address = os.environ.get(RUNNER, "threads").partition(":")
    return address if kind == "dask" else None


@contextmanager
def cluster_pool(jobs: int) -> Iterator[Executor | None]:
    """A Dask executor when ``IMGFLOW_TASK_RUNNER`` asks for Dask, else ``worker_pool(jobs)``.

    Inside a task that already runs on a Dask worker (a backfill's partitions on the Dask task
    runner), the jobs go to that worker's cluster through ``worker_client``, which takes the waiting
    task out of the worker's thread pool so it cannot starve its own jobs.
    """
    address = dask_address()
    if address is None or jobs <= 1:
        with worker_pool(jobs) as pool:
            yield pool
        return
    from distributed import Client, LocalCluster, get_worker, worker_client

    try:
        get_worker()
    except ValueError:  # not on a worker
        if address:
            with Client(address) as client:
                yield client.get_executor(pure=False)
            return
        with (
            LocalCluster(n_workers=min(worker_count(), jobs), threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            yield client.get_executor(pure=False)
        return
    with worker_client() as client:
        yield client.get_executor(pure=False)


def ordered_map(function: Callable[..., T], jobs: Sequence[tuple[Any, ...]], pool: Executor | bool | None = True) -> Iterator[T]:
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
    futures = deque(pool.submit(function, *job) for job in jobs)
    try:
        while futures:
            # Let go of each result once yielded: a future would keep it for the whole map.
            yield futures.popleft().result()
    finally:
        for future in futures:
            future.cancel()
