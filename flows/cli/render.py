"""What the command line prints: tables, summaries and log lines for a person (rich on a terminal)."""

from __future__ import annotations

import copy
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from imgflow.pipeline.summary import race_lines
from imgflow.reporting.datachecks import audit_line


def rich_console() -> Console:
    # Piped output (a log, a test) gets long lines rather than a table folded to 80 columns.
    return Console(width=None if sys.stdout.isatty() else 200)


def rich_table(*columns: str, title: str | None = None) -> Table:
    return Table(*columns, title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)


def print_summary(summary: dict[str, Any], as_json: bool, printer: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Print a run's summary with ``printer`` (default: a run summary), or as one JSON line, last."""
    sys.stderr.flush()
    if as_json:
        print(json.dumps(summary, sort_keys=True), flush=True)
    else:
        (printer or _print_summary)(summary)


class _WithoutTraceback(logging.Formatter):
    """Prefect logs a failed task's or flow's exception with its traceback. On the console this keeps
    the message and drops the traceback: a ``UserError`` is the user's data or settings, not a bug, and
    any other error's traceback goes to the log file ``crashed`` names. It formats a copy of the
    record, so the logs sent to the Prefect server keep the traceback."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text:
            record = copy.copy(record)
            record.exc_info, record.exc_text = None, None
        return self.inner.format(record)


def quiet_tracebacks() -> None:
    """Put ``_WithoutTraceback`` on Prefect's console handlers (set up when Prefect is imported)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(handler.formatter))


def _print_summary(summary: dict[str, Any]) -> None:
    print()
    print(f"{summary['model']}: {summary['decision']}" + (f" as {summary['version']}" if summary["version"] else ""))
    if summary["metrics"]["accuracy"] is not None:
        print(f"  test accuracy {summary['metrics']['accuracy']:.4f} on {summary['metrics']['test_records']} records")
    if "modalities" in summary["metrics"]:
        from imgflow.pipeline.summary import modalities_line

        print(f"  {modalities_line(summary['metrics']['modalities'])}")
    for reason in summary["reasons"]:
        print(f"  {reason}")
    print("  stages: " + ", ".join(f"{stage} {entry['status']}" for stage, entry in summary["stages"].items()))
    if "partitions" in summary:
        print("  partitions: " + ", ".join(f"{day} {status}" for day, status in summary["partitions"].items()))
    if "audit" in summary:
        print(f"  {audit_line(summary['audit'])}")
    if "budget" in summary:
        budget = summary["budget"]
        print(
            f"  budget {budget['budget']}: the run took {budget['seconds']:.0f} s of {budget['budget_seconds']:.0f}"
            + (", training ran out of its time" if budget["out_of_time"] else "")
        )
        for line in race_lines(budget):
            print(f"  {line}")
        if budget.get("fit"):
            print(f"  {budget['fit']['verdict']} (train {budget['fit']['train_accuracy']}, validation {budget['fit']['val_accuracy']})")
    for name, path in summary["artifacts"].items():
        if path:
            print(f"  {name}: {path}")


def print_tuning(summary: dict[str, Any]) -> None:
    print(Path(summary["tune"]["report"]).read_text())
    print(f"plot: {summary['tune']['plot']}")
    _print_summary(summary)


def print_predictions(summary: dict[str, Any]) -> None:
    print(
        f"\n{summary['model']} {summary['version']} ({summary['backend']}): {summary['rows']} rows, "
        f"{summary['errors']} with an error, {summary['images_per_second']} images/s -> {summary['output']}"
    )


def age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
