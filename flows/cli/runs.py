"""The commands that run flows: run, plan, backfill, predict and tune."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flows.cli.render import print_predictions, print_summary, print_tuning, quiet_tracebacks, rich_console, rich_table
from flows.params import BackfillParams, RunParams, TuneParams, from_args
from imgflow.runtime import memory
from imgflow.runtime.errors import ConfigError
from imgflow.runtime.lifetime import watch_descendants
from imgflow.runtime.parallel import start_forkserver

if TYPE_CHECKING:
    from flows.server import TemporaryAPI
    from imgflow.pipeline.context import Run


def run_command(args: argparse.Namespace) -> int:
    from imgflow.data.sources import source_fingerprint
    from imgflow.pipeline import PIPELINE
    from imgflow.pipeline.walk import cached_run, plan

    # Check the arguments and the source before starting Prefect, so a typo costs nothing; the
    # fingerprint taken while checking is handed to the flow, which need not open the source again.
    started = time.time()
    params = from_args(RunParams, args)
    run = params.open_run()
    cfg = run.cfg
    forced = PIPELINE.refreshed(params.refresh)
    if run.partitions is None:
        fingerprint = source_fingerprint(cfg.download.source, cfg.download.options)
        planned, cached = cached_run(run, forced=forced, until=params.until, fingerprint=fingerprint)
        if cached is not None:
            return _conclude_cached(run, params, args.json, cached, started)
    else:
        fingerprint, planned = None, plan(run, forced=forced, until=params.until)
    start_forkserver()  # the data stages' worker processes get ready while Prefect starts
    from flows.server import TemporaryAPI

    watch_descendants()  # before anything starts: nothing this run starts outlives it, however it ends
    api = TemporaryAPI()  # Prefect's server starts while the flow and TensorFlow are imported
    from flows.train import train

    if any(p.action == "run" and PIPELINE.step(p.stage).stage.tensorflow for p in planned):
        # Here, while the server starts, not in a background thread: a stage importing TensorFlow
        # (or Keras) while another thread is importing it can be handed a half-initialised module
        # (Python's answer to an import-lock cycle: seen as "dataset_ops has no attribute DatasetV2").
        import tensorflow  # noqa: F401

    return _run_flow(train, args.json, api=api, **params.model_dump(), source_fingerprint=fingerprint)


def _conclude_cached(run: Run, params: RunParams, as_json: bool, cached: dict[str, Any], started: float) -> int:
    """A run whose every stage is cached: what the flow would conclude (the same promotion, summary and
    run log) without starting Prefect or importing TensorFlow. Nothing is orchestrated, so no flow run
    is recorded; ``--refresh STAGE`` runs the flow again."""
    from imgflow.pipeline.conclude import conclude, localized

    print(
        f"imgflow: every stage of this run is cached ({', '.join(cached)}): nothing to orchestrate, "
        "no flow run started (--refresh STAGE runs one)",
        file=sys.stderr,
        flush=True,
    )
    summary = conclude(run, localized(run.store, cached), started, until=params.until)
    print_summary(summary.as_json(), as_json)
    return 0


def plan_command(args: argparse.Namespace) -> int:
    """What ``imgflow run`` with the same flags would run and reuse: no Prefect, no TensorFlow."""
    from imgflow.pipeline import PIPELINE
    from imgflow.pipeline.walk import plan

    params = from_args(RunParams, args)
    run = params.open_run()
    cfg = run.cfg
    planned = plan(run, forced=PIPELINE.refreshed(params.refresh), until=params.until)
    if args.json:
        print(json.dumps([dataclasses.asdict(p) for p in planned]), flush=True)
        return 0
    partitioned = any(p.partition for p in planned)
    columns = ("stage", "partition", "action", "key", "why") if partitioned else ("stage", "action", "key", "why")
    table = rich_table(*columns, title=f"plan: {cfg.dataset.name} under {cfg.artifacts}")
    style = {"run": "bold yellow", "reuse": "green", "skip": "dim"}
    for p in planned:
        cells = [p.stage, *([p.partition or ""] if partitioned else []), f"[{style[p.action]}]{p.action}[/]"]
        table.add_row(*cells, p.key or "(not known yet)", p.note)
    console = rich_console()
    console.print(table)
    counts = {action: sum(p.action == action for p in planned) for action in ("run", "reuse", "skip")}
    console.print(", ".join(f"{n} to {action}" for action, n in counts.items() if n))
    return 0


def backfill_command(args: argparse.Namespace) -> int:
    params = from_args(BackfillParams, args)
    params.open_run(partitions=(params.start, params.end))  # a wrong range or source costs nothing
    start_forkserver()
    from flows.backfill import backfill

    return _run_flow(backfill, args.json, **params.model_dump())


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
    quiet_tracebacks()
    memory.settle()  # what the imports made lives as long as the process: out of every later collection
    with api.serving():
        summary = flow(**parameters)
    print_summary(summary, as_json, printer)
    return 0


def predict_command(args: argparse.Namespace) -> int:
    from imgflow.registry import versions as registry
    from imgflow.serving.batch import input_options, input_pieces
    from tasks.store import store_at

    if not args.output.endswith(".parquet"):
        raise ConfigError(f"--output must be a .parquet file, got {args.output}")
    registry.resolve_name(store_at(args.artifacts).pull_models(args.name), args.name)
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
        printer=print_predictions,
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


def tune_command(args: argparse.Namespace) -> int:
    from imgflow.data.sources import source_fingerprint
    from imgflow.training.search import resolve_space

    params = from_args(TuneParams, args)
    cfg = params.open_run(partitions=False).cfg
    resolve_space(cfg.dataset, params.space)  # a bad space costs nothing
    source_fingerprint(cfg.download.source, cfg.download.options)  # nor a missing source
    import tensorflow  # noqa: F401 - imported here, not by a task's thread (see run_command)

    from flows.tune import tune

    return _run_flow(tune, args.json, printer=print_tuning, **params.model_dump())
