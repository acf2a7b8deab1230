"""The ``train`` flow: the declared pipeline (``imgflow.pipeline``) from the source to a promoted model."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from flows.params import RunParams, takes
from flows.pipeline import RunOptions, release, run_pipeline, scheduled_date, task_runner, title_run
from imgflow.pipeline import PIPELINE
from imgflow.runtime.lifetime import watch_descendants

Fingerprint = Annotated[str, Field(min_length=1, description="the source's content fingerprint, when the caller computed it")]


@flow(name="train", task_runner=task_runner())
@takes(RunParams)
def train(params: RunParams, as_of: dt.date | None = None, source_fingerprint: Fingerprint | None = None) -> dict[str, Any]:
    """Train, gate, export and promote an image classifier on ``dataset``; return the run summary.

    The parameters are ``flows.params.RunParams``'s (what ``imgflow run`` takes too). ``budget`` bounds
    the whole run's wall time: every ``[train]`` setting the spec leaves open is chosen to fill it
    (``imgflow.training.recipe``). ``refresh`` names a stage to run again even when its output exists,
    with every stage downstream of it; ``until`` stops after that stage. A ``parquet:`` source with
    ``date=`` partitions is read up to ``as_of`` (default: the day the run was scheduled for), one
    cached partition at a time, as a backfill would. ``source_fingerprint`` spares opening the source
    twice when the caller (the command line, which checks the source before starting Prefect) already
    fingerprinted it.
    """
    watch_descendants()  # a deployment run's processes end with it too (the CLI starts this earlier)
    started = time.time()
    day = as_of or scheduled_date()
    run = params.open_run(as_of=day)
    options = RunOptions(PIPELINE.refreshed(params.refresh), params.until, title=title_run(f"{run.cfg.dataset.name} {day}"))
    walked = run_pipeline(run, options, source_fingerprint)
    return release(run, options, walked.results, started, walked.parts).as_json()
