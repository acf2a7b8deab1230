"""How a command ends when it is stopped (Ctrl-C, SIGTERM) or meets an error imgflow did not expect."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from imgflow.runtime import stopping
from imgflow.runtime.errors import described_inputs

STOP_GRACE = 3.0  # seconds a stopped command waits for its worker threads to end before it exits


def on_stop_signal(signum: int, frame: Any) -> None:
    """SIGINT or SIGTERM, to this process alone or to its whole process group (a terminal's Ctrl-C,
    ``timeout``, a supervisor): a normal stop. The work in progress is asked to stop
    (``imgflow.runtime.stopping``: training ends within a batch, its committed epochs kept) and the main thread
    unwinds, so Prefect records the flow run as Crashed while its server (in a session of its own,
    which group signals do not reach) still answers. A second signal ends the process at once."""
    if not stopping.request(signum):
        os._exit(128 + signum)
    print(f"\nimgflow: {signal.Signals(signum).name}: stopping (send it again to stop at once)", file=sys.stderr, flush=True)
    raise KeyboardInterrupt


def stopped() -> int:
    """The line a stopped command ends with, and its status: 128 + the signal (130 for SIGINT, 143 for SIGTERM)."""
    signum = stopping.requested()
    assert signum is not None
    print(f"imgflow: interrupted by {signal.Signals(signum).name}; {stopping.resume_hint()}", file=sys.stderr, flush=True)
    return 128 + signum


def crashed(args: argparse.Namespace, error: Exception) -> int:
    """Report an exception imgflow did not expect: where it came from (the stage and its inputs, when a
    stage raised it: ``imgflow.runtime.errors.note_stage``), what it says, and the log file holding its full
    traceback. Stage outputs are moved into place only when complete, so none is half-written."""
    log = crash_log(getattr(args, "artifacts", None), error)
    stage = getattr(error, "imgflow_stage", None)
    where = f"in stage {stage} (inputs: {described_inputs(error.imgflow_inputs)})" if stage else f"in `imgflow {args.command}`"  # type: ignore[attr-defined]
    dataset = getattr(args, "dataset", None) or getattr(args, "input", None)
    message = (str(error).strip().splitlines() or [""])[0].rstrip(".") + "."
    print(
        f"imgflow: internal error {where}{f' for {dataset}' if dataset else ''}: {type(error).__name__}: {message} "
        f"The full traceback is in {log}. No stage output is half-written (each is moved into place only when "
        "complete): a rerun reuses the stages that finished. If the input is not at fault, this is a bug in "
        "imgflow: please report it with that file.",
        file=sys.stderr,
    )
    return 1


def crash_log(artifacts: str | None, error: Exception) -> Path:
    """Write ``error``'s traceback to ``<artifacts>/logs/error-<time>-<pid>.log`` (the local mirror of an
    object-store root; the temporary folder when that cannot be written) and return the path."""
    import tempfile
    import traceback

    from imgflow.store.roots import local_folder

    root = local_folder(artifacts or "artifacts")
    name = f"error-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    text = f"imgflow {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(error))
    for folder in (root / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return (folder / name).resolve()
        except OSError as problem:
            text += f"\n(could not be written to {folder}: {problem})\n"
    raise error  # neither place takes a file: the traceback goes to the terminal after all
