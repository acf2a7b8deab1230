"""The ``train`` flow: download -> clean -> shard -> train -> validate -> export -> promote."""

from __future__ import annotations

import re
import time
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import State

from imgflow import registry
from imgflow.config import build_run_config
from imgflow.fingerprint import to_jsonable
from imgflow.store import ArtifactStore, StageResult
from imgflow.summary import build_summary, summary_markdown
from tasks import stages


def _result(state: State) -> StageResult:
    """The StageResult a task state holds; a Prefect cache hit counts as ``cached``."""
    result = StageResult.from_dict(state.result())
    if state.name == "Cached":
        return StageResult(**{**result.to_dict(), "status": "cached"})
    return result


def _champion_validation(root: str, name: str, model: StageResult) -> StageResult | None:
    """When the candidate already is the champion, its recorded validation stands: no new evaluation."""
    champion = registry.champion(root, name)
    if champion is None or champion["model_fingerprint"] != model.fingerprint:
        return None
    recorded = registry.card(root, name, champion["version"])["lineage"]["validate"]
    return ArtifactStore(root).lookup("validate", recorded["key"])


@flow(name="train")
def train(
    dataset: str = "mnist5k",
    artifacts: str = "artifacts",
    epochs: int | None = None,
    min_accuracy: float | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Train, gate, export and promote an image classifier on ``dataset``; return the run summary."""
    started = time.time()
    cfg = build_run_config(dataset, artifacts, epochs=epochs, min_accuracy=min_accuracy, limit=limit)
    root, name = str(cfg.artifacts), cfg.dataset.name
    results: dict[str, StageResult] = {}

    # Data: download, clean, shard
    source = stages.fingerprint_source(cfg.download)
    results["download"] = _result(stages.download(cfg.download, {"source": source}, root, return_state=True))
    results["clean"] = _result(stages.clean(cfg.clean, {"raw": results["download"].to_dict()}, root, return_state=True))
    results["shard"] = _result(stages.shard(cfg.shard, {"clean": results["clean"].to_dict()}, root, return_state=True))
    shards = results["shard"].to_dict()

    # Model: train, then gate against the floor and the current champion on the same test split
    results["train"] = _result(stages.train(cfg.train, {"shards": shards}, root, return_state=True))
    model = results["train"].to_dict()
    validation = _champion_validation(root, name, results["train"])
    if validation is None:
        champion = registry.champion_result(root, name)
        inputs = {"shards": shards, "model": model, **({"champion": champion.to_dict()} if champion else {})}
        validation = _result(stages.validate(cfg.gate, inputs, root, return_state=True))
    results["validate"] = validation

    # Release: export and promote only what the gate let through
    if results["validate"].info["promote"]:
        results["export"] = _result(stages.export(cfg.export, {"shards": shards, "model": model}, root, return_state=True))
        stages.promote(root, name, to_jsonable(cfg), {stage: r.to_dict() for stage, r in results.items()})

    summary = build_summary(name, results, registry.champion(root, name), time.time() - started)
    artifact_key = re.sub(r"[^a-z0-9-]+", "-", f"imgflow-run-{name}".lower())
    create_markdown_artifact(summary_markdown(summary), key=artifact_key, description="imgflow run summary")
    return summary
