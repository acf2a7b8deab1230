"""The ``backfill`` flow: ingest each date partition in a range once, then train on their union."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from flows._pipeline import RunOptions, release, run_pipeline, task_runner, title_run
from flows.params import BackfillParams, takes
from imgflow.config import build_run_config
from imgflow.data.partitions import select
from imgflow.runtime.lifetime import watch_descendants


@flow(name="backfill", task_runner=task_runner())
@takes(BackfillParams)
def backfill(params: BackfillParams) -> dict[str, Any]:
    """Download and clean every ``date=YYYY-MM-DD`` partition of a ``parquet:`` dataset from ``start`` to
    ``end`` (included), each cached on its own and run concurrently, then merge, shard their union,
    train, gate, export and promote. The parameters are ``flows.params.BackfillParams``'s. The summary's
    ``partitions`` says which partitions ran and which were cached. ``budget`` bounds the whole run's
    wall time, as the train flow's does."""
    watch_descendants()
    started = time.time()
    cfg = build_run_config(params.dataset, params.artifacts, epochs=params.epochs, min_accuracy=params.min_accuracy, budget=params.budget)
    run = RunOptions(str(cfg.artifacts), title=title_run(f"backfill {cfg.dataset.name} {params.start}..{params.end}"))
    walked = run_pipeline(cfg, run, select(cfg.download.source, params.start, params.end))
    return release(cfg, run, walked.results, started, walked.parts).as_json()
