"""Giving back the memory a finished stage freed.

A run keeps one process for all its stages (Prefect's flow process). What a stage frees stays with
the process unless handed back: Arrow's allocator keeps freed blocks for reuse, and so does the C
library's ``malloc``. The next stage (training,
with TensorFlow's own footprint) would then start on top of it. ``release`` returns both to the
operating system; the store calls it after every build that grew the process by ``WORTH`` or more
(below that there is little to give back, and the full garbage collection it starts with is slow in
a process that has imported TensorFlow and Prefect).

``settling`` and ``settle`` are for the start of such a process: importing TensorFlow, Keras and
Prefect makes millions of objects that live as long as the process, and every full collection walks
all of them again. The imports run with the collector paused, and what exists once they are done is frozen out
of every later collection (``gc.freeze``): a full collection then walks only what the run made since.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

WORTH = 64 * 2**20


def resident() -> int:
    """This process's resident memory in bytes (0 where there is no ``/proc``)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except FileNotFoundError:
        return 0


def release(grown_since: int | None = None) -> None:
    """Return freed memory to the operating system (Python's garbage, Arrow's pool, malloc's heap);
    given ``grown_since`` (a ``resident()`` reading), only if the process has grown by ``WORTH`` since."""
    now = resident()
    if grown_since is not None and now and now - grown_since < WORTH:
        return
    gc.collect()
    if "pyarrow" in sys.modules:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    libc = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and libc:
        ctypes.CDLL(libc).malloc_trim(0)


_paused = False  # the collector was on when ``settling`` paused it


@contextmanager
def settling() -> Iterator[None]:
    """A block that sets a process up (its imports), with the cyclic garbage collector paused until
    ``settle`` is called within, or else until the block ends."""
    global _paused
    _paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _paused:
            gc.enable()
        _paused = False


def settle() -> None:
    """Everything that exists now lives as long as the process: keep it out of every later collection
    (``gc.freeze``; an object frozen still goes when nothing refers to it) and let the collector
    resume, if ``settling`` paused it."""
    global _paused
    gc.freeze()
    if _paused:
        gc.enable()
    _paused = False
