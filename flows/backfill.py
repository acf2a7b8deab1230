"""The ``backfill`` flow: ingest each date partition in a range once, then train on their union."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from flows.params import BackfillParams, takes
from flows.pipeline import RunOptions, release, run_pipeline, task_runner, title_run
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
    run = params.open_run(partitions=(params.start, params.end))
    options = RunOptions(title=title_run(f"backfill {run.cfg.dataset.name} {params.start}..{params.end}"))
    walked = run_pipeline(run, options)
    return release(run, options, walked.results, started, walked.parts).as_json()
