"""The ``train`` flow: download -> clean -> shard -> train -> validate -> export -> promote."""

from __future__ import annotations

import re
import time
from typing import Any

from prefect import Task, flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import State

from imgflow import registry
from imgflow.cache import record_run
from imgflow.config import build_run_config
from imgflow.fingerprint import to_jsonable
from imgflow.promote import champion_validation
from imgflow.stages import refreshed
from imgflow.store import ArtifactStore, StageResult
from imgflow.summary import build_summary, summary_markdown
from tasks import stages


def _result(state: State) -> StageResult:
    """The StageResult a task state holds; a Prefect cache hit counts as ``cached``."""
    result = StageResult.from_dict(state.result())
    if state.name == "Cached":
        return StageResult(**{**result.to_dict(), "status": "cached"})
    return result


@flow(name="train")
def train(
    dataset: str = "mnist5k",
    artifacts: str = "artifacts",
    epochs: int | None = None,
    min_accuracy: float | None = None,
    limit: int | None = None,
    refresh: str | None = None,
) -> dict[str, Any]:
    """Train, gate, export and promote an image classifier on ``dataset``; return the run summary.

    ``refresh`` names a stage to run again even when its output exists, with every stage after it.
    """
    started = time.time()
    cfg = build_run_config(dataset, artifacts, epochs=epochs, min_accuracy=min_accuracy, limit=limit)
    forced = refreshed(refresh)
    root, name = str(cfg.artifacts), cfg.dataset.name
    results: dict[str, StageResult] = {}

    def run(stage: Task, config: Any, inputs: dict[str, Any]) -> StageResult:
        state = stage(config, inputs, root, force=stage.name in forced, return_state=True)
        return _result(state)

    # Data: download, clean, shard
    source = stages.fingerprint_source(cfg.download)
    results["download"] = run(stages.download, cfg.download, {"source": source})
    results["clean"] = run(stages.clean, cfg.clean, {"raw": results["download"].to_dict()})
    results["shard"] = run(stages.shard, cfg.shard, {"clean": results["clean"].to_dict()})
    shards = results["shard"].to_dict()

    # Model: train, then gate against the floor and the current champion on the same test split
    results["train"] = run(stages.train, cfg.train, {"shards": shards})
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
        results["validate"] = run(stages.validate, cfg.gate, inputs)

    # Release: export and promote only what the gate let through
    if results["validate"].info["promote"]:
        results["export"] = run(stages.export, cfg.export, {"shards": shards, "model": model})
        stages.promote(root, name, to_jsonable(cfg), {stage: r.to_dict() for stage, r in results.items()})

    summary = build_summary(name, results, registry.champion(root, name), time.time() - started)
    record_run(root, summary)
    _publish(f"imgflow-run-{name}", summary_markdown(summary), "run summary: decision, metrics, stages, artifacts")
    _publish(f"imgflow-data-quality-{name}", results["clean"].file("report.md").read_text(), "data quality report")
    _publish(f"imgflow-validation-{name}", results["validate"].file("report.md").read_text(), "gate decision, per-class metrics")
    return summary


def _publish(key: str, markdown: str, description: str) -> None:
    """A Prefect markdown artifact (keys allow only lowercase letters, digits and dashes)."""
    create_markdown_artifact(markdown, key=re.sub(r"[^a-z0-9-]+", "-", key.lower()), description=description)
