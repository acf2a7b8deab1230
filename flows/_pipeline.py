"""The pieces the flows share: running a stage task, ingesting data (whole or by date partition),
and releasing a model (shard, train, gate, export, promote, report). Wiring only: the work is in
``imgflow`` and the tasks in ``tasks``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import time
from typing import Any

from prefect import Task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.futures import PrefectFuture
from prefect.states import State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from imgflow import registry
from imgflow.cache import record_run
from imgflow.config import RunConfig
from imgflow.errors import ConfigError
from imgflow.fingerprint import to_jsonable
from imgflow.partitions import Partition
from imgflow.promote import champion_validation
from imgflow.store import ArtifactStore, StageResult
from imgflow.summary import build_summary, summary_markdown
from tasks import stages


def task_runner() -> TaskRunner:
    """The task runner for the per-partition stages, from ``IMGFLOW_TASK_RUNNER``: ``threads`` (the
    default), ``dask`` (a local Dask cluster of processes) or ``dask:ADDRESS`` (an existing scheduler,
    e.g. ``dask:tcp://scheduler:8786``). Read when a flow module is imported, so a deployment sets it in
    its job variables' ``env``."""
    spec = os.environ.get("IMGFLOW_TASK_RUNNER", "threads")
    kind, _, address = spec.partition(":")
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=int(address) if address else None)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})
    raise ConfigError(f"IMGFLOW_TASK_RUNNER={spec!r}: expected threads[:N], dask or dask:ADDRESS")


def _result(state: State) -> StageResult:
    """The StageResult a task state holds; a Prefect cache hit counts as ``cached``."""
    result = StageResult.from_dict(state.result())
    if state.name == "Cached":
        return StageResult(**{**result.to_dict(), "status": "cached"})
    return result


def run_stage(stage: Task, config: Any, inputs: dict[str, Any], root: str, forced: frozenset[str]) -> StageResult:
    return _result(stage(config, inputs, root, force=stage.name in forced, return_state=True))


def ingest(cfg: RunConfig, root: str, forced: frozenset[str]) -> dict[str, StageResult]:
    """Download and clean the whole source."""
    source = stages.fingerprint_source(cfg.download)
    raw = run_stage(stages.download, cfg.download, {"source": source}, root, forced)
    return {"download": raw, "clean": run_stage(stages.clean, cfg.clean, {"raw": raw.to_dict()}, root, forced)}


def _settled(future: PrefectFuture) -> StageResult:
    future.wait()
    return _result(future.state)


def ingest_partitions(
    cfg: RunConfig, root: str, forced: frozenset[str], partitions: list[Partition]
) -> tuple[dict[str, StageResult], dict[str, str]]:
    """Download and clean each partition as its own source, all at once through the flow's task runner,
    then merge the clean tables. Returns the results (``clean`` is the merged table) and each
    partition's status: ``ran`` when its download or clean ran, else ``cached``."""
    submitted = {}
    for partition in partitions:
        download_cfg = dataclasses.replace(cfg.download, source=partition.source)
        source = stages.fingerprint_source.submit(download_cfg)
        raw = stages.download.submit(download_cfg, {"source": source}, root, force="download" in forced)
        clean = stages.clean.submit(cfg.clean, {"raw": raw}, root, force="clean" in forced)
        submitted[partition.date.isoformat()] = (raw, clean)
    statuses, parts = {}, {}
    for day, (raw, clean) in submitted.items():
        raw_result, clean_result = _settled(raw), _settled(clean)
        statuses[day] = "ran" if "ran" in (raw_result.status, clean_result.status) else "cached"
        parts[f"part:{day}"] = clean_result.to_dict()
    merged = run_stage(stages.merge, cfg.clean, parts, root, forced)
    return {"clean": merged}, statuses


def release(
    cfg: RunConfig,
    results: dict[str, StageResult],
    root: str,
    forced: frozenset[str],
    started: float,
    partitions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Shard the clean data, train, gate against the floor and the champion, export and promote what
    passes; publish the reports and an event; return the run summary."""
    name = cfg.dataset.name
    results["shard"] = run_stage(stages.shard, cfg.shard, {"clean": results["clean"].to_dict()}, root, forced)
    shards = results["shard"].to_dict()
    results["train"] = run_stage(stages.train, cfg.train, {"shards": shards}, root, forced)
    model = results["train"].to_dict()
    recorded = None
    if "validate" not in forced:
        recorded = champion_validation(ArtifactStore(root), name, cfg.gate, results["train"], results["shard"])
    if recorded is not None:
        results["validate"] = recorded  # the candidate already is the champion, gated as it is now
    else:
        inputs = {"shards": shards, "model": model}
        champion = registry.champion_result(root, name)
        if champion is not None and champion.fingerprint != results["train"].fingerprint:
            inputs["champion"] = champion.to_dict()  # only a different model is a rival
        results["validate"] = run_stage(stages.validate, cfg.gate, inputs, root, forced)

    if results["validate"].info["promote"]:
        results["export"] = run_stage(stages.export, cfg.export, {"shards": shards, "model": model}, root, forced)
        stages.promote(root, name, to_jsonable(cfg), {stage: r.to_dict() for stage, r in results.items()})

    summary = build_summary(name, root, results, registry.champion(root, name), time.time() - started, partitions)
    record_run(root, summary)
    _announce(summary)
    publish(f"imgflow-run-{name}", summary_markdown(summary), "run summary: decision, metrics, stages, artifacts")
    publish(f"imgflow-data-quality-{name}", results["clean"].file("report.md").read_text(), "data quality report")
    publish(f"imgflow-validation-{name}", results["validate"].file("report.md").read_text(), "gate decision, per-class metrics")
    return summary


def _announce(summary: dict[str, Any]) -> None:
    """A Prefect event per gate decision (``imgflow.model.promoted`` / ``imgflow.model.rejected``), for
    automations: the resource is the model, the payload has the version and the numbers."""
    emit_event(
        event=f"imgflow.model.{summary['decision']}",
        resource={"prefect.resource.id": f"imgflow.model.{summary['model']}", "prefect.resource.name": summary["model"]},
        payload={
            "version": summary["version"],
            "accuracy": summary["metrics"]["accuracy"],
            "champion_accuracy": summary["metrics"]["champion_accuracy"],
            "test_records": summary["metrics"]["test_records"],
            "reasons": summary["reasons"],
        },
    )


def publish(key: str, markdown: str, description: str) -> None:
    """A Prefect markdown artifact (keys allow only lowercase letters, digits and dashes)."""
    create_markdown_artifact(markdown, key=re.sub(r"[^a-z0-9-]+", "-", key.lower()), description=description)


def scheduled_date() -> dt.date:
    """The day this flow run was scheduled for (today for an ad-hoc run): a past-dated scheduled run
    sees the data up to its own date, which makes Prefect's backfilled runs backfills of the data too."""
    from prefect.runtime import flow_run

    scheduled = flow_run.scheduled_start_time
    return scheduled.date() if scheduled is not None else dt.date.today()
