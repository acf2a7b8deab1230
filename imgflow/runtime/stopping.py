"""A stop asked for by a signal (Ctrl-C, ``timeout``, a process supervisor), seen by the work in progress.

The command line's signal handler calls ``request``; long-running work calls ``check`` between steps
(training after every batch, feature extraction after every batch, anything that reports progress)
and so ends within one step with ``Stopped``, its output discarded as a failed build's is, its
checkpoints kept. ``resume_hint`` says what a rerun picks up: the last training epoch committed.
"""

from __future__ import annotations

import signal
import threading

_lock = threading.Lock()
_requested: int | None = None
_last_epoch = 0


class Stopped(Exception):
    """The work ended early because a stop was requested (``signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def request(signum: int) -> bool:
    """Ask the work in progress to stop; True the first time (False when a stop was asked already)."""
    global _requested
    with _lock:
        first = _requested is None
        if first:
            _requested = signum
        return first


def requested() -> int | None:
    """The signal a stop was requested by, or None."""
    return _requested


def check() -> None:
    """Raise ``Stopped`` when a stop has been requested."""
    if _requested is not None:
        raise Stopped(_requested)


def epoch_committed(epoch: int) -> None:
    """Training committed ``epoch`` (1-based) to its checkpoint: a rerun resumes after it."""
    global _last_epoch
    _last_epoch = epoch


def training_finished() -> None:
    """The model is complete: a rerun has no training to resume."""
    global _last_epoch
    _last_epoch = 0


def resume_hint() -> str:
    """What a rerun picks up, for the line a stopped command ends with."""
    if _last_epoch:
        return f"a rerun resumes training from the checkpoint of epoch {_last_epoch}, and reuses every stage that finished"
    return "a rerun reuses every stage that finished"


def reset() -> None:
    """Forget a request (for tests and for a process that goes on after handling one)."""
    global _requested, _last_epoch
    with _lock:
        _requested, _last_epoch = None, 0
