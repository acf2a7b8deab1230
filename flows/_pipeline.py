"""What the flows share: walking the declared pipeline (``imgflow.pipeline.PIPELINE``) with one Prefect
task per stage, then promoting, reporting and announcing the result. Wiring only: the graph is the
declaration, the work is in ``imgflow`` and the task wrappers in ``tasks``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from collections.abc import Mapping
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.futures import PrefectFuture
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from imgflow.config import RunConfig
from imgflow.data.partitions import Partition
from imgflow.pipeline import CHAMPION, PIPELINE, SOURCE, Step, part_inputs, promoted
from imgflow.registry.promote import versus_champion
from imgflow.registry.release import conclude, localized
from imgflow.reporting.summary import summary_markdown
from imgflow.results import StageResult, clean_table
from imgflow.runtime.errors import ConfigError
from imgflow.runtime.parallel import worker_count
from imgflow.store.artifacts import ArtifactStore
from tasks import stages


def task_runner() -> Any:  # a TaskRunner: flow() types its argument as TaskRunner[PrefectFuture], which no runner is
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
        return DaskTaskRunner(cluster_kwargs={"n_workers": worker_count(), "threads_per_worker": 1, "processes": True})
    raise ConfigError(f"IMGFLOW_TASK_RUNNER={spec!r}: expected threads[:N], dask or dask:ADDRESS")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How one run walks the pipeline: what to force, where to stop, and the flow run's title (what
    ran, for the UI's list of runs; ``release`` adds the outcome)."""

    root: str
    forced: frozenset[str] = frozenset()
    until: str | None = None
    title: str = ""

    @property
    def wanted(self) -> frozenset[str]:
        return PIPELINE.until(self.until)


def _result(state: State) -> StageResult:
    """The StageResult a task state holds; a Prefect cache hit counts as ``cached``."""
    result: StageResult = state.result()
    return result.with_status("cached") if state.name == "Cached" else result


def title_run(title: str) -> str:
    """Name the current flow run ``title`` (the UI lists runs by name; Prefect's are random words)."""
    from prefect.runtime import flow_run

    if flow_run.id is not None:
        with get_client(sync_client=True) as client:
            client.set_flow_run_name(flow_run.id, title)
    return title


def _settled(future: PrefectFuture) -> StageResult:
    future.wait()
    return _result(future.state)


def _ingest_steps(run: RunOptions) -> list[Step]:
    return [step for step in PIPELINE.steps if step.per_partition and step.name in run.wanted]


def ingest(cfg: RunConfig, run: RunOptions, source_fingerprint: str | None = None) -> dict[str, StageResult]:
    """The per-partition steps (download, clean) over the whole source."""
    source = source_fingerprint or stages.fingerprint_source(cfg.download)
    results: dict[str, StageResult] = {}
    for step in _ingest_steps(run):
        inputs = PIPELINE.inputs(step, results, {SOURCE: source})
        state = stages.STAGE_TASKS[step.name](step.config_of(cfg), inputs, run.root, force=step.name in run.forced, return_state=True)
        results[step.name] = _result(state)  # type: ignore[arg-type]  # a state: return_state=True, typed as maybe-async
    return results


def ingest_partitions(cfg: RunConfig, run: RunOptions, partitions: list[Partition]) -> dict[str, dict[str, StageResult]]:
    """The per-partition steps for each date partition as its own source, all at once through the
    flow's task runner; returns each date's results."""
    submitted: dict[str, dict[str, PrefectFuture]] = {}
    for partition in partitions:
        part_cfg = dataclasses.replace(cfg, download=dataclasses.replace(cfg.download, source=partition.source))
        futures: dict[str, Any] = {}
        source = stages.fingerprint_source.submit(part_cfg.download)
        for step in _ingest_steps(run):
            inputs = PIPELINE.inputs(step, futures, {SOURCE: source})
            futures[step.name] = stages.STAGE_TASKS[step.name].submit(
                step.config_of(part_cfg), inputs, run.root, force=step.name in run.forced
            )
        submitted[partition.date.isoformat()] = futures
    return {day: {name: _settled(future) for name, future in futures.items()} for day, futures in submitted.items()}


def build_model(
    cfg: RunConfig, run: RunOptions, results: dict[str, StageResult], parts: Mapping[str, Mapping[str, StageResult]] | None
) -> dict[str, StageResult]:
    """The steps after ingestion, in declared order: merge (partitioned runs), shard, train, validate
    against the champion, and export when the gate promotes."""
    store = ArtifactStore(run.root)
    store.pull_models(cfg.dataset.name)  # where versus_champion reads it
    for step in PIPELINE.run_steps(partitioned=parts is not None):
        if step.per_partition or step.name not in run.wanted:
            continue
        if step.gated_by and not promoted(results[step.gated_by]):
            continue
        external: dict[str, Any] = {CHAMPION: None}
        if step.against_champion:
            check = versus_champion(store, cfg.dataset.name, step.config_of(cfg), results["train"], results["shard"])
            if check.recorded is not None and step.name not in run.forced:
                results[step.name] = check.recorded  # the candidate already is the champion, gated as it is now
                continue
            external[CHAMPION] = check.rival
        inputs: dict[str, Any] | None
        if step.fan_in:
            assert parts is not None
            inputs = part_inputs({day: r["clean"] for day, r in parts.items()})
        else:
            inputs = PIPELINE.inputs(step, results, external)
        if step.before is not None and inputs is not None:
            step.before(cfg, inputs)
        config = step.config_of(cfg, results)
        state = stages.STAGE_TASKS[step.name](config, inputs, run.root, force=step.name in run.forced, return_state=True)
        results[step.name] = _result(state)  # type: ignore[arg-type]  # a state: return_state=True, typed as maybe-async
    return results


def release(
    cfg: RunConfig,
    run: RunOptions,
    results: dict[str, StageResult],
    started: float,
    parts: Mapping[str, Mapping[str, StageResult]] | None = None,
) -> dict[str, Any]:
    """Promote what the gate passed and exported; publish the reports and an event; return the run
    summary."""
    name = cfg.dataset.name
    results = localized(run.root, results)
    summary = conclude(cfg, run.root, results, started, parts, run.until, promoter=stages.promote)
    if run.title:
        outcome = f"{summary['version']} {summary['decision']}" if summary["version"] else summary["decision"]
        title_run(f"{run.title}: {outcome}")
    table = clean_table(results)
    publish(f"imgflow-run-{name}", summary_markdown(summary), "run summary: decision, metrics, stages, artifacts")
    if table is not None:
        publish(f"imgflow-data-quality-{name}", table.file("report.md").read_text(), "data quality report")
    if "validate" in results:
        _announce(summary)
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
