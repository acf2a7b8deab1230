"""Progress of long work (downloading, cleaning, training, predicting), reported without knowing who listens.

A stage calls ``report(done, total, unit)`` as it goes; whoever runs it decides what that becomes: the
Prefect task wrapper turns it into a progress artifact and log lines (``tasks.progress``), the command
line into a progress bar. With nobody listening a report costs a context-variable lookup.

A context variable rather than an argument: the stages' signature stays ``build(out_dir, config,
inputs)``, and a listener set around one task's run reaches only the work of that task (each thread
and each task run has its own context).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from imgflow.runtime import stopping

# (done, total when known, unit) -> None
Listener = Callable[[int, "int | None", str], None]

_listener: ContextVar[Listener | None] = ContextVar("imgflow_progress", default=None)


def report(done: int, total: int | None, unit: str = "records") -> None:
    """``done`` of ``total`` units (None: unknown) of the current work are finished. Work that reports
    progress also ends here, with ``imgflow.runtime.stopping.Stopped``, once a stop is requested."""
    stopping.check()
    listener = _listener.get()
    if listener is not None:
        listener(done, total, unit)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send the reports made inside this block (in this context) to ``listener``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


# (epoch, that epoch's metrics: loss, accuracy, val_loss, val_accuracy, learning_rate) -> None
EpochListener = Callable[[int, dict[str, float]], None]

_epochs: ContextVar[EpochListener | None] = ContextVar("imgflow_epochs", default=None)


def epoch_done(epoch: int, metrics: dict[str, float]) -> None:
    """Training finished ``epoch`` (1-based) with ``metrics``: for a listener that judges a run while it
    trains (the tuner's pruner). An exception the listener raises ends the training."""
    listener = _epochs.get()
    if listener is not None:
        listener(epoch, metrics)


@contextmanager
def watching_epochs(listener: EpochListener) -> Iterator[None]:
    """Send ``epoch_done`` calls made inside this block (in this context) to ``listener``."""
    token = _epochs.set(listener)
    try:
        yield
    finally:
        _epochs.reset(token)
