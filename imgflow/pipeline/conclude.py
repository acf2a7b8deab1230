"""The end of every run, with or without an orchestrator: promote what the gate passed and exported,
write the run summary and log the run. The train flow does this after its stages (then publishes the
reports to Prefect); ``imgflow run`` does it alone when every stage is cached and there is nothing to
orchestrate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from imgflow.pipeline.context import Run
from imgflow.pipeline.housekeeping import record_run
from imgflow.pipeline.summary import RunSummary, build_summary
from imgflow.registry import promote
from imgflow.registry import versions as registry
from imgflow.results import StageResult, clean_table
from imgflow.store.artifacts import ArtifactStore
from imgflow.store.fingerprint import to_jsonable

Promoter = Callable[[ArtifactStore, str, Mapping[str, Any], Mapping[str, StageResult]], Mapping[str, Any]]


def localized(store: ArtifactStore, results: Mapping[str, StageResult], read: Collection[str] | None = None) -> dict[str, StageResult]:
    """``results`` with what the registry and the reports read (``read``; by default the model's stages,
    the clean table, the drift check and the audit) in this machine's folder: an output built on another machine,
    or kept only in an object-store root, is fetched."""
    table = clean_table(results)
    read = read if read is not None else {"train", "validate", "export", "drift", "audit", table.stage if table is not None else ""}
    return {stage: store.localize(result) if stage in read else result for stage, result in results.items()}


def conclude(
    run: Run,
    results: Mapping[str, StageResult],
    started: float,
    parts: Mapping[str, Mapping[str, StageResult]] | None = None,
    until: str | None = None,
    promoter: Promoter = promote.promote,
) -> RunSummary:
    """Promote the exported candidate (``results`` localized) with ``promoter``, log the run in the
    artifact root and return its summary."""
    cfg, store = run.cfg, run.store
    name = cfg.dataset.name
    if "export" in results:
        promoter(store, name, to_jsonable(cfg), results)
    local = store.pull_models(name)  # the local folder (a mirror of an object-store root)
    summary = build_summary(name, store, results, registry.champion(local, name), time.time() - started, parts, until, cfg.train.budget)
    record_run(store, summary.as_json())
    return summary
