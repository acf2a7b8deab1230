"""The run summary: one JSON object that says what a run decided, measured, reused and produced.

``imgflow run --json`` prints it as its last line; the train flow returns it and publishes it as a
Prefect markdown artifact.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from imgflow.pipeline import PIPELINE
from imgflow.registry.versions import model_dir
from imgflow.reporting.datachecks import Audit, Drift, Part, audit_line, audit_section, drift_section
from imgflow.results import CleanInfo, StageResult, TrainInfo, ValidateInfo, clean_table
from imgflow.runtime import cpus
from imgflow.store.artifacts import ArtifactStore


class Metrics(Part):
    """The candidate's test accuracy, on how many records, and the champion's on the same ones; with
    text, the three accuracies (``modalities``); against a champion, the paired comparison (``paired``)."""

    accuracy: float | None
    test_records: int | None
    champion_accuracy: float | None
    modalities: dict[str, float] | None = None
    paired: dict[str, Any] | None = None
    slices: dict[str, dict[str, Any]] | None = None


class BudgetEntry(Part):
    """A budgeted run: the budget, the run's seconds against it, and the plan training followed."""

    budget: str
    budget_seconds: float
    seconds: float
    within: bool
    training_seconds: float | None
    out_of_time: bool | None
    plan: list[str] | None
    fit: dict[str, Any] | None
    used: float = 0.0  # the share of the budget the run took
    stopped: str | None = None  # why training ended (its planned steps done, out of time, validation stopped improving)
    # A race (imgflow.training.race): one entry per candidate (its val_<metric>, seconds, epochs, rungs, and
    # whether it won), and the winner with why
    race: list[dict[str, Any]] | None = None
    winner: dict[str, Any] | None = None


class RunSummary(Part):
    """What a run decided, measured, reused and produced. ``stages`` has an entry per declared step
    (``status``, and ``key``/``path``, with the clean table's accounting and training's epochs);
    ``partitions``, ``budget``, ``tune``, ``drift`` and ``audit`` only where the run had them. ``as_json`` is the one JSON
    object ``imgflow run --json`` prints last and the flows return: a field absent here is absent there."""

    model: str
    decision: Literal["promoted", "rejected", "stopped"]
    reasons: list[str]
    version: str | None
    metrics: Metrics
    stages: dict[str, dict[str, Any]]
    artifacts: dict[str, str | None]
    seconds: float
    cpus: dict[str, Any]
    partitions: dict[str, str] | None = None
    budget: BudgetEntry | None = None
    tune: dict[str, Any] | None = None
    drift: Drift | None = None
    audit: Audit | None = None
    # Where a browser on another machine opens what the run made (the model report): a presigned URL
    # when the root is on s3://, where a file:// link would point at the worker's disk.
    links: dict[str, str] | None = None

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


def _stage_entry(result: StageResult | None) -> dict[str, Any]:
    if result is None:
        return {"status": "skipped"}
    entry = {"status": result.status, "key": result.key, "path": result.path}
    return {**entry, "repaired": result.repaired} if result.repaired else entry


def _partitioned_entry(results: list[StageResult]) -> dict[str, Any]:
    """One per-partition stage over all partitions: ``ran`` when it ran for any of them."""
    if not results:
        return {"status": "skipped"}
    status = "ran" if any(r.status == "ran" for r in results) else "cached"
    return {"status": status, "partitions": len(results), "keys": [r.key for r in results]}


def build_summary(
    name: str,
    store: ArtifactStore,
    results: Mapping[str, StageResult],
    champion: Mapping[str, Any] | None,
    seconds: float,
    partitions: Mapping[str, Mapping[str, StageResult]] | None = None,
    until: str | None = None,
    budget: str | None = None,
) -> RunSummary:
    """``results`` has every stage that ran or was reused (export is absent when the gate rejected;
    everything after ``until`` when the run stopped there).

    A partitioned run downloads and cleans each date partition (``partitions``: date -> stage ->
    result) and merges them: ``stages.clean`` then reports the merged table's accounting, and the
    summary's ``partitions`` says which partitions were downloaded or cleaned in this run (``ran``)
    and which were reused (``cached``). With a time ``budget``, ``budget`` says what it was, the
    seconds the run took, and the recipe's plan.
    """
    steps = PIPELINE.run_steps(partitioned=partitions is not None)
    stages = {step.name: _stage_entry(results.get(step.name)) for step in steps}
    if partitions is not None:
        for step in steps:
            if step.per_partition:
                stages[step.name] = _partitioned_entry([p[step.name] for p in partitions.values() if step.name in p])
    table = clean_table(results)
    if table is not None:
        clean = table.info
        assert isinstance(clean, CleanInfo)
        stages["clean"].update(
            records_in=clean.records_in,
            kept=clean.kept,
            quarantined=clean.quarantined,
            quarantine_reasons=clean.quarantine_reasons,
            splits=clean.splits,
            class_balance={name: sum(counts.values()) for name, counts in clean.per_class.items()},
            source_images=clean.source_images.model_dump(mode="json", exclude_none=True),
        )
    train = results.get("train")
    if train is not None:
        assert isinstance(train.info, TrainInfo)
        stages["train"].update(
            epochs=train.info.epochs,
            final=train.info.final,
            # How this run trained: from scratch (0), from a killed run's checkpoint, or not at all (None).
            resumed_from_epoch=train.info.resumed_from_epoch if train.status == "ran" else None,
        )
    validate = results.get("validate")
    validation = validate.info if validate is not None else None
    assert validation is None or isinstance(validation, ValidateInfo)
    promoted = (
        validation is not None
        and validation.promote
        and champion is not None
        and champion["model_fingerprint"] == results["train"].fingerprint
    )
    export = results.get("export")

    def path(stage: str, name: str) -> str | None:
        return str(results[stage].file(name)) if stage in results else None

    artifacts = {
        "root": store.uri,
        "data_quality_report": str(table.file("report.md")) if table is not None else None,
        "audit_report": path("audit", "report.html"),
        "training_curves": path("train", "training_curves.png"),
        "confusion_matrix": path("validate", "confusion_matrix.png"),
        "validation_report": path("validate", "report.md"),
        "savedmodel": str(export.file("savedmodel")) if export else None,
        "onnx": str(export.file("model.onnx")) if export else None,
        "registry": str(Path(champion["path"])) if promoted and champion else None,
        "model_report": str(Path(champion["path"]) / "report.html") if promoted and champion else None,
    }
    decision: Literal["promoted", "rejected", "stopped"]
    if validation is None:
        decision, reasons = "stopped", [f"stopped after {until} (--until): nothing was validated"]
    else:
        decision, reasons = ("promoted" if promoted else "rejected"), list(validation.reasons)
    measured: dict[str, Any] = {}  # with text, the three accuracies; against a champion, the paired comparison
    if validation and validation.modalities:
        measured["modalities"] = validation.modalities
    if validation and validation.paired:
        measured["paired"] = validation.paired.model_dump()  # McNemar's p-values and the disagreements
    if validation and validation.slices:
        measured["slices"] = validation.slices  # with [gate] slice_by
    metrics = Metrics(
        accuracy=validation.accuracy if validation else None,
        test_records=validation.test_records if validation else None,
        champion_accuracy=validation.champion_accuracy if validation else None,
        **measured,
    )
    had: dict[str, Any] = {}  # what only some runs have: absent from the JSON otherwise
    if partitions is not None:
        had["partitions"] = _partition_statuses(partitions)
    if budget is not None:
        had["budget"] = _budget_entry(budget, seconds, results.get("train"))
    drifts = {day: known["drift"] for day, known in partitions.items() if known.get("drift")} if partitions is not None else {}
    if partitions is None and results.get("drift") is not None:
        drifts = {"all": results["drift"]}
    if drifts:
        had["drift"] = drift_section(drifts)
    audits = {day: known["audit"] for day, known in partitions.items() if known.get("audit")} if partitions is not None else {}
    if partitions is None and results.get("audit") is not None:
        audits = {"all": results["audit"]}
    if audits:
        had["audit"] = audit_section(audits, results.get("shard"))
    if promoted and champion:
        report = model_dir("", name) / champion["version"] / "report.html"
        had["links"] = {"model_report": store.link(report.as_posix())}
    return RunSummary(
        model=name,
        decision=decision,
        reasons=reasons,
        version=champion["version"] if promoted and champion else None,
        metrics=metrics,
        stages=stages,
        artifacts=artifacts,
        seconds=round(seconds, 2),
        cpus=cpus.budget().as_dict(),
        **had,
    )


def _budget_entry(budget: str, seconds: float, train: StageResult | None) -> BudgetEntry:
    """The budget, the run's seconds against it, and the plan training followed (when it trained)."""
    from imgflow.config.checks import parse_duration

    limit = parse_duration(budget)
    info = train.info if train is not None else None
    assert info is None or isinstance(info, TrainInfo)
    return BudgetEntry(
        budget=budget,
        budget_seconds=limit,
        seconds=round(seconds, 2),
        within=seconds <= limit,
        training_seconds=info.deadline if info else None,
        out_of_time=info.out_of_time if info else None,
        plan=info.plan if info else None,
        fit=fit(info.final) if info else None,
        used=round(seconds / limit, 3),
        stopped=info.stopped if info else None,
        race=info.race if info else None,
        winner=info.winner if info else None,
    )


def fit(final: Mapping[str, float]) -> dict[str, Any] | None:
    """Train against validation accuracy at the last epoch, and what the gap says. Train accuracy is
    measured on augmented images with dropout on, so it reads a little low: a model whose train accuracy
    is hardly above its validation accuracy has capacity or time left to use."""
    if "accuracy" not in final or "val_accuracy" not in final:
        return None
    train, val = final["accuracy"], final["val_accuracy"]
    if train - val > 0.05:
        verdict = "overfits: train accuracy is well above validation; more data or augmentation would help more than time"
    elif train - val < 0.01:
        verdict = "underfits: train accuracy is hardly above validation; a larger model or more time would help"
    else:
        verdict = "fits: train accuracy is a little above validation"
    return {"train_accuracy": round(train, 4), "val_accuracy": round(val, 4), "verdict": verdict}


def _partition_statuses(partitions: Mapping[str, Mapping[str, StageResult]]) -> dict[str, str]:
    """Each date: ``ran`` when its data was ingested in this run (any step that clean needs ran), else
    ``cached``. Its drift check is not ingestion: it runs again whenever the champion changes."""
    ingest = PIPELINE.upstream("clean")
    return {
        day: "ran" if any(r.status == "ran" for name, r in stages.items() if name in ingest) else "cached"
        for day, stages in partitions.items()
    }


def modalities_line(modalities: Mapping[str, float]) -> str:
    """A model with text's three test accuracies, side by side."""
    return f"image + text {modalities['both']:.4f}, image only {modalities['image_only']:.4f}, text only {modalities['text_only']:.4f}"


def race_lines(budget: Mapping[str, Any]) -> list[str]:
    """A race's candidates, the winner first, each with its validation figure, seconds and epochs, and
    why training ended."""
    lines = []
    if budget.get("race"):
        metric = next(key for key in budget["race"][0] if key.startswith("val_"))
        lines.append(f"race: {budget['winner']['reason']}")
        for entry in sorted(budget["race"], key=lambda e: not e["winner"]):
            rungs = ", ".join(f"{r[metric]:.4f} after rung {r['rung'] + 1}" for r in entry["rungs"])
            lines.append(
                f"{'won' if entry['winner'] else 'out'}: {entry['candidate']}: {metric} {entry[metric]:.4f} "
                f"({rungs}; {entry['seconds']:.0f} s, {entry['epochs']} epochs)"
            )
    if budget.get("stopped"):
        lines.append(f"training stopped: {budget['stopped']}; the run used {budget.get('used', 0):.0%} of the budget")
    return lines


def summary_markdown(summary: Mapping[str, Any]) -> str:
    metrics = summary["metrics"]
    clean = summary["stages"]["clean"]
    lines = [
        f"# imgflow run: {summary['model']} {summary['decision'].upper()}" + (f" as {summary['version']}" if summary["version"] else ""),
        "",
        *(
            [
                f"- test accuracy: **{metrics['accuracy']:.4f}** on {metrics['test_records']} records"
                + (f" (champion: {metrics['champion_accuracy']:.4f})" if metrics["champion_accuracy"] is not None else "")
            ]
            if metrics["accuracy"] is not None
            else []
        ),
        *([f"- {modalities_line(metrics['modalities'])}"] if "modalities" in metrics else []),
        *[f"- {reason}" for reason in summary["reasons"]],
        *([f"- drifted: {', '.join(summary['drift']['flagged'])}"] if summary.get("drift", {}).get("flagged") else []),
        *([f"- {audit_line(summary['audit'])}"] if summary.get("audit") else []),
        *(
            [f"- records: {clean['records_in']} in, {clean['kept']} kept, {clean['quarantined']} quarantined"]
            if "records_in" in clean
            else []
        ),
        f"- wall time: {summary['seconds']} s" + (f" of a {summary['budget']['budget']} budget" if summary.get("budget") else ""),
        "",
        "| stage | status | key |",
        "|---|---|---|",
        *[f"| {stage} | {_status(entry)} | `{entry.get('key', '')}` |" for stage, entry in summary["stages"].items()],
        "",
        *(
            ["| partition | status |", "|---|---|", *[f"| {day} | {status} |" for day, status in summary["partitions"].items()], ""]
            if "partitions" in summary
            else []
        ),
        *(
            [
                "## The recipe's plan",
                "",
                *[f"- {line}" for line in summary["budget"]["plan"]],
                *race_lines(summary["budget"]),
                *(
                    [
                        (
                            f"- after training: {summary['budget']['fit']['verdict']} (train {summary['budget']['fit']['train_accuracy']}, "
                            f"validation {summary['budget']['fit']['val_accuracy']})"
                        )
                    ]
                    if summary["budget"].get("fit")
                    else []
                ),
                "",
            ]
            if (summary.get("budget") or {}).get("plan")
            else []
        ),
        "| artifact | path |",
        "|---|---|",
        *[
            f"| {name} | [{Path(path).name}]({(summary.get('links') or {}).get(name) or Path(path).as_uri()}) |"
            if name == "model_report"
            else f"| {name} | `{path}` |"
            for name, path in summary["artifacts"].items()
            if path
        ],
        "",
    ]
    return "\n".join(lines)


def _status(entry: Mapping[str, Any]) -> str:
    """A stage's status, saying when training went on from a killed run's checkpoint."""
    resumed = entry.get("resumed_from_epoch")
    return f"{entry['status']} (resumed from epoch {resumed})" if resumed else entry["status"]
