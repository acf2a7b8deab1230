"""The ``backfill`` flow: ingest each date partition in a range once, then train on their union."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from prefect import flow

from flows._pipeline import RunOptions, release, run_pipeline, task_runner, title_run
from flows.train import Accuracy, Budget, Dataset, Epochs
from imgflow.config import build_run_config
from imgflow.data.partitions import select
from imgflow.runtime.lifetime import watch_descendants


@flow(name="backfill", task_runner=task_runner())
def backfill(
    dataset: Dataset,
    start: dt.date,
    end: dt.date,
    artifacts: str = "artifacts",
    epochs: Epochs | None = None,
    min_accuracy: Accuracy | None = None,
    budget: Budget | None = None,
) -> dict[str, Any]:
    """Download and clean every ``date=YYYY-MM-DD`` partition of a ``parquet:`` dataset from ``start`` to
    ``end`` (included), each cached on its own and run concurrently, then merge, shard their union,
    train, gate, export and promote. The summary's ``partitions`` says which partitions ran and which
    were cached. ``budget`` bounds the whole run's wall time, as the train flow's does."""
    watch_descendants()
    started = time.time()
    cfg = build_run_config(dataset, artifacts, epochs=epochs, min_accuracy=min_accuracy, budget=budget)
    run = RunOptions(str(cfg.artifacts), title=title_run(f"backfill {cfg.dataset.name} {start}..{end}"))
    walked = run_pipeline(cfg, run, select(cfg.download.source, start, end))
    return release(cfg, run, walked.results, started, walked.parts)
