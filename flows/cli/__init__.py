"""The ``imgflow`` command line: the flows, the plan, the registry and the cache, for a person.

Its commands and flags are in ``parser.py`` (``imgflow --help``; the docs' reference is generated from
it); those of ``run``, ``plan``, ``backfill`` and ``tune`` are their flows' parameters (``flows.params``).

A problem with the user's input (a missing dataset, a bad flag value) prints one paragraph and exits
with status 2, without a traceback. Anything else is a bug: it too ends in one paragraph (the stage, its
inputs, the error) and status 1, its traceback written to a log file under the artifact root
(``<artifacts>/logs/``) rather than over the terminal. Everything that can be checked is checked before
Prefect starts, so a typo costs nothing.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from flows.cli.crash import STOP_GRACE, crash_log, crashed, on_stop_signal, stopped
from flows.cli.parser import build_parser
from flows.cli.runs import backfill_command, predict_command, run_command, tune_command
from imgflow.runtime import memory, stopping
from imgflow.runtime.errors import UserError, machine_fault

__all__ = ["build_parser", "entry", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A batch job on a closed network: the Prefect server's telemetry heartbeat only fails (and logs a
    # traceback). Set PREFECT_SERVER_ANALYTICS_ENABLED=true to turn it back on.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The library's own log lines (a fetch's retries, one line each) go where Prefect's go.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "imgflow")
    # A library that logs before Prefect is imported (TensorFlow Datasets, opening a tfds: source to
    # check it) would otherwise get the root logger a formatted handler of logging's own, and Prefect
    # leaves a root logger with such a handler alone: no console handler of Prefect's, so no filter on
    # it either, and a user's error would print its traceback. An unformatted one Prefect replaces.
    if not logging.getLogger().handlers:
        logging.getLogger().addHandler(logging.StreamHandler())
    # The commands that run a flow import TensorFlow, Keras and Prefect first: with the collector
    # paused until the flow starts (imgflow.runtime.memory).
    settling = (
        memory.settling() if args.handler in (run_command, backfill_command, predict_command, tune_command) else contextlib.nullcontext()
    )
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_stop_signal)
    try:
        with settling:
            return args.handler(args)
    except UserError as exc:
        print(f"imgflow: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one paragraph, the traceback in a file
        if stopping.requested() is not None:  # whatever a stop broke on its way out
            return stopped()
        fault = machine_fault(exc, getattr(args, "artifacts", None))
        if fault is not None:
            try:
                details = f"details: {crash_log(getattr(args, 'artifacts', None), exc)}"
            except Exception:  # noqa: BLE001 - neither the root nor the temporary folder takes a file
                details = "no folder here could take its details"
            print(f"imgflow: error: {fault} ({details})", file=sys.stderr)
            return 2
        return crashed(args, exc)
    except BaseException:  # KeyboardInterrupt from on_stop_signal, Prefect's TerminationSignal
        if stopping.requested() is None:
            raise
        return stopped()


def entry() -> int:
    """The ``imgflow`` command: ``main``, then an exit without the interpreter's last garbage
    collection. With TensorFlow, Keras and Prefect loaded that collection walks millions of objects
    that are about to be freed with the process anyway. ``gc.freeze`` takes them out of its reach."""
    code = main()
    sys.stdout.flush()
    gc.freeze()
    if stopping.requested() is not None:
        # Worker threads end within a step of the stop; whatever does not by then (a thread blocked in
        # a read) is not waited for: every output is published whole or not at all.
        deadline = time.monotonic() + STOP_GRACE
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        sys.stderr.flush()
        os._exit(code)
    return code
