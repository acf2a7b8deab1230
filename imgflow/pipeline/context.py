"""A run's context, built once: its settings (``RunConfig``), the date partitions it reads and its
opened artifact store. The command line, the flows, the multi-worker runner and the benchmarks all
build it with ``open_run`` and pass it down; nothing below rebuilds any part of it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgflow.config import RunConfig, build_run_config
from imgflow.data.partitions import Partition, date_partitions, select
from imgflow.store.artifacts import ArtifactStore
from imgflow.store.roots import open_store


@dataclass(frozen=True)
class Run:
    """What every part of a run reads: ``cfg``, ``store`` (opened on ``cfg.artifacts``) and
    ``partitions`` (None: the whole source at once)."""

    cfg: RunConfig
    store: ArtifactStore
    partitions: tuple[Partition, ...] | None = None


def open_run(
    dataset: str,
    artifacts: str | Path = "artifacts",
    *,
    partitions: bool | tuple[dt.date | None, dt.date | None] = True,
    as_of: dt.date | None = None,
    **settings: Any,
) -> Run:
    """The context of a run of ``dataset`` into ``artifacts``, ``settings`` being
    ``build_run_config``'s (epochs, min_accuracy, limit, budget, overrides).

    ``partitions``: True reads a ``parquet:`` source's ``date=`` partitions up to ``as_of`` (default
    today), one cached partition at a time, and any other source whole; a (start, end) pair reads that
    range (a backfill; None: unbounded); False reads the source whole (tuning).
    """
    cfg = build_run_config(dataset, artifacts, **settings)
    source = cfg.download.source
    chosen: list[Partition] | None = None
    if isinstance(partitions, tuple):
        chosen = select(source, *partitions)
    elif partitions and source.startswith("parquet:") and date_partitions(source):
        chosen = select(source, None, as_of or dt.date.today())
    return Run(cfg, open_store(cfg.artifacts), tuple(chosen) if chosen is not None else None)
