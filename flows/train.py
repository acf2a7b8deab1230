"""The ``train`` flow: the declared pipeline (``imgflow.pipeline``) from the source to a promoted model."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any, Literal

from prefect import flow
from pydantic import Field

from flows._pipeline import RunOptions, release, run_pipeline, scheduled_date, task_runner, title_run
from imgflow.config import build_run_config
from imgflow.data.partitions import date_partitions, select
from imgflow.pipeline import ORDER, PIPELINE
from imgflow.runtime.lifetime import watch_descendants

# Flow parameters mirror the CLI's flags; Prefect validates them with pydantic before a run starts.
Epochs = Annotated[int, Field(ge=1, description="training epochs (default: the dataset's, else 15)")]
Accuracy = Annotated[float, Field(ge=0.0, le=1.0, description="the gate's accuracy floor on the test split")]
Limit = Annotated[int, Field(ge=1, description="a fixed sample of N records of the source")]
Budget = Annotated[str, Field(min_length=1, description="a time budget for the whole run (15m, 90s, 1h30m): the recipe fills it")]
Dataset = Annotated[str, Field(min_length=1, description="a name in datasets/, a .toml file, or a source spec")]
StageName = Literal[ORDER]  # type: ignore[valid-type]
Fingerprint = Annotated[str, Field(min_length=1, description="the source's content fingerprint, when the caller computed it")]


@flow(name="train", task_runner=task_runner())
def train(
    dataset: Dataset = "mnist5k",
    artifacts: str = "artifacts",
    epochs: Epochs | None = None,
    min_accuracy: Accuracy | None = None,
    limit: Limit | None = None,
    budget: Budget | None = None,
    refresh: StageName | None = None,
    until: StageName | None = None,
    as_of: dt.date | None = None,
    source_fingerprint: Fingerprint | None = None,
) -> dict[str, Any]:
    """Train, gate, export and promote an image classifier on ``dataset``; return the run summary.

    ``budget`` bounds the whole run's wall time: every ``[train]`` setting the spec leaves open is
    chosen to fill it (``imgflow.training.recipe``). ``refresh`` names a stage to run again even when its output exists, with every stage downstream of
    it; ``until`` stops after that stage. A ``parquet:`` source with ``date=`` partitions is read up to
    ``as_of`` (default: the day the run was scheduled for), one cached partition at a time, as a
    backfill would. ``source_fingerprint`` spares opening the source twice when the caller (the
    command line, which checks the source before starting Prefect) already fingerprinted it.
    """
    watch_descendants()  # a deployment run's processes end with it too (the CLI starts this earlier)
    started = time.time()
    cfg = build_run_config(dataset, artifacts, epochs=epochs, min_accuracy=min_accuracy, limit=limit, budget=budget)
    day = as_of or scheduled_date()
    run = RunOptions(str(cfg.artifacts), PIPELINE.refreshed(refresh), until, title=title_run(f"{cfg.dataset.name} {day}"))
    partitions = (
        select(cfg.download.source, None, day)
        if cfg.download.source.startswith("parquet:") and date_partitions(cfg.download.source)
        else None
    )
    walked = run_pipeline(cfg, run, partitions, source_fingerprint)
    return release(cfg, run, walked.results, started, walked.parts)
