"""The ``imgflow`` command line.

    imgflow run [--dataset SPEC] [--artifacts DIR] [--epochs N] [--min-accuracy F] [--limit N]
                [--refresh STAGE] [--json]
    imgflow backfill --dataset parquet:ROOT --start DATE --end DATE [--artifacts DIR] [--epochs N]
                     [--min-accuracy F] [--json]
    imgflow models [--artifacts DIR] [--name NAME]
    imgflow cache ls [--artifacts DIR]
    imgflow cache prune [--artifacts DIR] [--keep-runs N] [--dry-run]

A problem with the user's input (a missing dataset, a bad flag value) prints one paragraph and exits
with status 2, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from imgflow.errors import UserError
from imgflow.stages import ORDER


def _run(args: argparse.Namespace) -> int:
    from imgflow.config import build_run_config
    from imgflow.sources import open_source

    # Check the arguments and the source before starting Prefect, so a typo costs nothing.
    cfg = build_run_config(args.dataset, args.artifacts, epochs=args.epochs, min_accuracy=args.min_accuracy, limit=args.limit)
    open_source(cfg.download.source, cfg.download.options)
    from flows.train import train

    return _run_flow(
        train,
        args.json,
        dataset=args.dataset,
        artifacts=args.artifacts,
        epochs=args.epochs,
        min_accuracy=args.min_accuracy,
        limit=args.limit,
        refresh=args.refresh,
    )


def _backfill(args: argparse.Namespace) -> int:
    from imgflow.config import build_run_config
    from imgflow.partitions import select

    cfg = build_run_config(args.dataset, args.artifacts, epochs=args.epochs, min_accuracy=args.min_accuracy)
    select(cfg.download.source, args.start, args.end)  # a wrong range or source costs nothing
    from flows.backfill import backfill

    return _run_flow(
        backfill,
        args.json,
        dataset=args.dataset,
        start=args.start,
        end=args.end,
        artifacts=args.artifacts,
        epochs=args.epochs,
        min_accuracy=args.min_accuracy,
    )


def _run_flow(flow: Any, as_json: bool, **parameters: Any) -> int:
    """Run a flow that returns a run summary; print the summary (or its JSON line, last)."""
    _quiet_user_errors()
    try:
        summary = flow(**parameters)
    finally:
        _stop_temporary_server()
    sys.stderr.flush()
    if as_json:
        print(json.dumps(summary, sort_keys=True), flush=True)
    else:
        _print_summary(summary)
    return 0


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


class _WithoutTraceback(logging.Filter):
    """Prefect logs a failed task's or flow's exception with its traceback. For a ``UserError`` (the
    user's data or settings, not our bug) the console keeps the message and drops the traceback; the
    logs sent to the Prefect server keep it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_user_errors() -> None:
    """Put ``_WithoutTraceback`` on Prefect's console handlers (set up when Prefect is imported)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_WithoutTraceback())


def _stop_temporary_server() -> None:
    """Stop Prefect's temporary server now rather than at exit, so its farewell log line comes before
    the summary and ``--json`` output really ends with the JSON line, even with 2>&1."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    # Prefect keeps its temporary servers in this (private) registry and stops them at exit, after
    # its log and event workers have sent what they hold: do both, in that order, now.
    servers = list(getattr(SubprocessASGIServer, "_instances", {}).values())
    if servers:
        APILogWorker.drain_all(timeout=30)
        EventsWorker.drain_all(timeout=30)
    for server in servers:
        server.stop()


def _print_summary(summary: dict[str, Any]) -> None:
    print()
    print(f"{summary['model']}: {summary['decision']}" + (f" as {summary['version']}" if summary["version"] else ""))
    print(f"  test accuracy {summary['metrics']['accuracy']:.4f} on {summary['metrics']['test_records']} records")
    for reason in summary["reasons"]:
        print(f"  {reason}")
    print("  stages: " + ", ".join(f"{stage} {entry['status']}" for stage, entry in summary["stages"].items()))
    if "partitions" in summary:
        print("  partitions: " + ", ".join(f"{day} {status}" for day, status in summary["partitions"].items()))
    for name, path in summary["artifacts"].items():
        if path:
            print(f"  {name}: {path}")


def _models(args: argparse.Namespace) -> int:
    from pathlib import Path

    from imgflow import registry

    root = Path(args.artifacts)
    names = [args.name] if args.name else sorted(p.name for p in (root / "models").glob("*") if p.is_dir())
    if not names:
        print(f"no models registered under {root / 'models'}")
    for name in names:
        champion = registry.champion(root, name)
        print(name)
        for version in registry.versions(root, name):
            card = registry.card(root, name, version)
            mark = "*" if champion and champion["version"] == version else " "
            print(f" {mark} {version}  accuracy {card['metrics']['accuracy']:.4f}  {card['source']}")
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _cache(args: argparse.Namespace) -> int:
    from imgflow import cache

    if args.cache_command == "ls":
        found = cache.entries(args.artifacts)
        print(f"{'stage':<9} {'key':<22} {'size':>9} {'age':>5}  used by")
        for entry in found:
            users = [f"{len(entry.runs)} run(s), last {entry.runs[-1]}"] if entry.runs else []
            users += entry.models
            state = "" if entry.complete else "  [incomplete: left by a killed run]"
            print(
                f"{entry.stage:<9} {entry.key:<22} {entry.bytes / 1e6:>7.1f}MB {_age(time.time() - entry.created):>5}  "
                f"{', '.join(users) or '-'}{state}"
            )
        print(f"{len(found)} outputs, {sum(e.bytes for e in found) / 1e6:.1f} MB under {args.artifacts}")
        return 0
    removed = cache.prune(args.artifacts, keep_runs=args.keep_runs, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for entry in removed:
        print(f"{verb} {entry.stage}/{entry.key} ({entry.bytes / 1e6:.1f} MB)")
    print(f"{verb} {len(removed)} outputs, {sum(e.bytes for e in removed) / 1e6:.1f} MB")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgflow", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the train flow: download, clean, shard, train, validate, export")
    run.add_argument("--dataset", default="mnist5k", help="a name in datasets/, a .toml file, or a source spec such as sample:mnist5k or tfds:mnist")
    run.add_argument("--artifacts", default="artifacts", help="the artifact root (default: ./artifacts)")
    run.add_argument("--epochs", type=int, help="training epochs (default: the dataset's, else 15)")
    run.add_argument("--min-accuracy", type=float, help="the gate's accuracy floor on the test split (default 0.98)")
    run.add_argument("--limit", type=int, help="use a fixed sample of N records of the source (for quick runs)")
    run.add_argument("--refresh", metavar="STAGE", choices=ORDER, help=f"run STAGE and every stage after it again even if cached ({', '.join(ORDER)})")
    run.add_argument("--json", action="store_true", help="end the output with one JSON line summarising the run")
    run.set_defaults(handler=_run)

    back = commands.add_parser(
        "backfill",
        help="ingest each date=YYYY-MM-DD partition of a parquet: dataset in a range once, then train on their union",
    )
    back.add_argument("--dataset", required=True, help="parquet:ROOT (with date=YYYY-MM-DD folders) or a spec naming one")
    back.add_argument("--start", type=_date, required=True, help="first partition date, YYYY-MM-DD (included)")
    back.add_argument("--end", type=_date, required=True, help="last partition date, YYYY-MM-DD (included)")
    back.add_argument("--artifacts", default="artifacts", help="the artifact root (default: ./artifacts)")
    back.add_argument("--epochs", type=int, help="training epochs (default: the dataset's, else 15)")
    back.add_argument("--min-accuracy", type=float, help="the gate's accuracy floor on the test split (default 0.98)")
    back.add_argument("--json", action="store_true", help="end the output with one JSON line summarising the run")
    back.set_defaults(handler=_backfill)

    models = commands.add_parser("models", help="list registered models and versions (* marks the champion)")
    models.add_argument("--artifacts", default="artifacts")
    models.add_argument("--name", help="only this model")
    models.set_defaults(handler=_models)
    cache = commands.add_parser("cache", help="list or prune stage outputs in the artifact store")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    listing = cache_commands.add_parser("ls", help="every stage output: key, size, age, the runs and models using it")
    listing.add_argument("--artifacts", default="artifacts")
    pruning = cache_commands.add_parser(
        "prune",
        help="remove outputs that no registered model and none of the recent runs use (never a model's "
        "lineage); run it while no pipeline runs",
    )
    pruning.add_argument("--artifacts", default="artifacts")
    pruning.add_argument("--keep-runs", type=int, default=5, help="keep what the last N runs used (default 5)")
    pruning.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    cache.set_defaults(handler=_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A batch job on a closed network: the Prefect server's telemetry heartbeat only fails (and logs a
    # traceback). Set PREFECT_SERVER_ANALYTICS_ENABLED=true to turn it back on.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"imgflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
