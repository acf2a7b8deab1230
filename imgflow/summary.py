"""The run summary: one JSON object that says what a run decided, measured, reused and produced.

``imgflow run --json`` prints it as its last line; the train flow returns it and publishes it as a
Prefect markdown artifact.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imgflow.stages import ORDER
from imgflow.store import StageResult


def _stage_entry(result: StageResult | None) -> dict[str, Any]:
    if result is None:
        return {"status": "skipped"}
    return {"status": result.status, "key": result.key, "path": result.path}


def build_summary(
    name: str,
    root: str | Path,
    results: Mapping[str, StageResult],
    champion: Mapping[str, Any] | None,
    seconds: float,
    partitions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``results`` has every stage that ran or was reused; export is absent when the gate rejected.

    A partitioned run has no single download: ``clean`` is the merged table, and ``partitions`` says
    which date partitions were downloaded and cleaned in this run (``ran``) or reused (``cached``).
    """
    validation = results["validate"].info
    promoted = (
        validation["promote"]
        and champion is not None
        and champion["model_fingerprint"] == results["train"].fingerprint
    )
    stages = {stage: _stage_entry(results.get(stage)) for stage in ORDER}
    if partitions is not None:
        stages["download"] = {"status": "ran" if "ran" in partitions.values() else "cached", "partitions": len(partitions)}
    clean = results["clean"].info
    stages["clean"].update(
        records_in=clean["records_in"],
        kept=clean["kept"],
        quarantined=clean["quarantined"],
        quarantine_reasons=clean["quarantine_reasons"],
        splits=clean["splits"],
        class_balance={name: sum(counts.values()) for name, counts in clean["per_class"].items()},
        source_images=clean["source_images"],
    )
    train = results["train"]
    stages["train"].update(
        epochs=train.info["epochs"],
        final=train.info["final"],
        # How this run trained: from scratch (0), from a killed run's checkpoint, or not at all (None).
        resumed_from_epoch=train.info["resumed_from_epoch"] if train.status == "ran" else None,
    )
    export = results.get("export")
    artifacts = {
        "root": str(root),
        "data_quality_report": str(results["clean"].file("report.md")),
        "training_curves": str(results["train"].file("training_curves.png")),
        "confusion_matrix": str(results["validate"].file("confusion_matrix.png")),
        "validation_report": str(results["validate"].file("report.md")),
        "savedmodel": str(export.file("savedmodel")) if export else None,
        "onnx": str(export.file("model.onnx")) if export else None,
        "registry": str(Path(champion["path"])) if promoted and champion else None,
        "model_report": str(Path(champion["path"]) / "report.html") if promoted and champion else None,
    }
    return {
        "model": name,
        "decision": "promoted" if promoted else "rejected",
        "reasons": validation["reasons"],
        "version": champion["version"] if promoted and champion else None,
        "metrics": {
            "accuracy": validation["accuracy"],
            "test_records": validation["test_records"],
            "champion_accuracy": validation["champion_accuracy"],
        },
        "stages": stages,
        "artifacts": artifacts,
        "seconds": round(seconds, 2),
        **({"partitions": dict(partitions)} if partitions is not None else {}),
    }


def summary_markdown(summary: Mapping[str, Any]) -> str:
    metrics = summary["metrics"]
    clean = summary["stages"]["clean"]
    lines = [
        f"# imgflow run: {summary['model']} {summary['decision'].upper()}"
        + (f" as {summary['version']}" if summary["version"] else ""),
        "",
        f"- test accuracy: **{metrics['accuracy']:.4f}** on {metrics['test_records']} records"
        + (f" (champion: {metrics['champion_accuracy']:.4f})" if metrics["champion_accuracy"] is not None else ""),
        *[f"- {reason}" for reason in summary["reasons"]],
        f"- records: {clean['records_in']} in, {clean['kept']} kept, {clean['quarantined']} quarantined",
        f"- wall time: {summary['seconds']} s",
        "",
        "| stage | status | key |",
        "|---|---|---|",
        *[f"| {stage} | {entry['status']} | `{entry.get('key', '')}` |" for stage, entry in summary["stages"].items()],
        "",
        *(
            ["| partition | status |", "|---|---|", *[f"| {day} | {status} |" for day, status in summary["partitions"].items()], ""]
            if "partitions" in summary
            else []
        ),
        "| artifact | path |",
        "|---|---|",
        *[
            f"| {name} | [{Path(path).name}]({Path(path).as_uri()}) |" if name == "model_report" else f"| {name} | `{path}` |"
            for name, path in summary["artifacts"].items()
            if path
        ],
        "",
    ]
    return "\n".join(lines)
