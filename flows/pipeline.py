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
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.futures import PrefectFuture
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from imgflow.pipeline import Step
from imgflow.pipeline.conclude import conclude, localized
from imgflow.pipeline.context import Run
from imgflow.pipeline.summary import RunSummary, summary_markdown
from imgflow.pipeline.walk import How, Walked, walk
from imgflow.reporting.datachecks import Drift
from imgflow.results import StageResult, clean_table
from imgflow.runtime.errors import ConfigError
from imgflow.runtime.parallel import worker_count
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

    forced: frozenset[str] = frozenset()
    until: str | None = None
    title: str = ""


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


class PrefectRun:
    """The executor of a run under Prefect (``imgflow.pipeline.walk.walk``): each step a task (``tasks.stages``),
    submitted to the flow's task runner for the per-partition steps of a partitioned run (so the date
    partitions download and clean at once), else run in turn."""

    measure = True

    def __init__(self, root: str) -> None:
        self.root = root

    def fingerprint(self, download: Any, concurrent: bool) -> Any:
        return stages.fingerprint_source.submit(download) if concurrent else stages.fingerprint_source(download)

    def build(self, step: Step, config: Any, inputs: Mapping[str, Any] | None, how: How) -> Any:
        task = stages.task_of(step)
        if how.concurrent:
            return task.submit(config, inputs, self.root, force=how.force)
        state = task(config, inputs, self.root, force=how.force, return_state=True)
        return _result(state)  # type: ignore[arg-type]  # a state: return_state=True, typed as maybe-async

    def settle(self, value: Any) -> StageResult | None:
        if isinstance(value, PrefectFuture):
            value.wait()
            return _result(value.state)
        return value

    def passed(self, step: Step, why: str, partition: str | None = None, result: StageResult | None = None) -> None:
        """Nothing to do: the walk skipped ``step`` or reused ``result`` as it stands."""


def run_pipeline(run: Run, options: RunOptions, fingerprint: str | None = None, given: Mapping[str, StageResult] | None = None) -> Walked:
    """The pipeline's one walk (``imgflow.pipeline.walk.walk``), every step a Prefect task."""
    executor = PrefectRun(run.store.uri)
    return walk(run, executor, forced=options.forced, until=options.until, fingerprint=fingerprint, given=given)


def release(
    run: Run,
    options: RunOptions,
    results: dict[str, StageResult],
    started: float,
    parts: Mapping[str, Mapping[str, StageResult]] | None = None,
) -> RunSummary:
    """Promote what the gate passed and exported; publish the reports and an event; return the run
    summary."""
    cfg = run.cfg
    name = cfg.dataset.name
    results = localized(run.store, results)
    parts = (
        {day: localized(run.store, known, read={"drift", "audit"}) for day, known in parts.items()} if parts is not None else None
    )  # their reports
    summary = conclude(run, results, started, parts, options.until, promoter=stages.promote)
    if options.title:
        outcome = f"{summary.version} {summary.decision}" if summary.version else summary.decision
        title_run(f"{options.title}: {outcome}")
    table = clean_table(results)
    publish(f"imgflow-run-{name}", summary_markdown(summary.as_json()), "run summary: decision, metrics, stages, artifacts")
    if table is not None:
        publish(f"imgflow-data-quality-{name}", table.file("report.md").read_text(), "data quality report")
    if summary.drift is not None:
        _announce_drift(name, summary.drift, cfg.gate.max_drift)
        reports = [Path(entry.report).with_name("report.md").read_text() for entry in summary.drift.checks.values()]
        publish(f"imgflow-drift-{name}", "\n".join(reports), "new data against the data the champion learned from")
    if summary.audit is not None:
        reports = [Path(entry.report).with_name("report.md").read_text() for entry in summary.audit.checks.values()]
        publish(f"imgflow-audit-{name}", "\n".join(reports), "suspected label errors, near-duplicates, outliers")
    if "validate" in results:
        _announce(summary)
        publish(f"imgflow-validation-{name}", results["validate"].file("report.md").read_text(), "gate decision, per-class metrics")
    if summary.version and summary.artifacts.get("registry"):
        # The promoted version's card in the UI itself: readable where the HTML report's link is not.
        card = Path(str(summary.artifacts["registry"])) / "model_card.md"
        publish(f"imgflow-model-card-{name}", card.read_text(), f"{summary.version}: inputs, accuracy, gate, lineage, config")
    return summary


def _announce(summary: RunSummary) -> None:
    """A Prefect event per gate decision (``imgflow.model.promoted`` / ``imgflow.model.rejected``), for
    automations: the resource is the model, the payload has the version and the numbers."""
    emit_event(
        event=f"imgflow.model.{summary.decision}",
        resource={"prefect.resource.id": f"imgflow.model.{summary.model}", "prefect.resource.name": summary.model},
        payload={
            "version": summary.version,
            "accuracy": summary.metrics.accuracy,
            "champion_accuracy": summary.metrics.champion_accuracy,
            "test_records": summary.metrics.test_records,
            "reasons": summary.reasons,
        },
    )


def _announce_drift(name: str, drift: Drift, policy: str) -> None:
    """A Prefect event per drifted partition (``imgflow.data.drifted``), so an automation can page
    someone: the resource names the dataset and the partition, the payload the checks and the report."""
    for where in drift.flagged:
        entry = drift.checks[where]
        emit_event(
            event="imgflow.data.drifted",
            resource={
                "prefect.resource.id": f"imgflow.data.{name}.{where}",
                "prefect.resource.name": f"{name} {where}",
                "imgflow.partition": where,
            },
            payload={
                "partition": where,
                "champion": entry.reference,
                "reasons": entry.reasons,
                "report": entry.report,
                "max_drift": policy,
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
