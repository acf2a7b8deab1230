"""The real train flow on a small slice of the real MNIST sample, under a temporary Prefect server."""

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

STAGES = ("download", "clean", "drift", "audit", "shard", "train", "validate", "export")


def _run(artifacts: Path, **overrides) -> dict:
    from flows.train import train

    params = {"dataset": "mnist5k", "artifacts": str(artifacts), "epochs": 2, "min_accuracy": 0.0, "limit": 800}
    return train(**{**params, **overrides})


def test_train_flow_promotes_reuses_and_gates(tmp_path: Path) -> None:
    import onnxruntime as ort
    import tensorflow as tf

    import datetime as dt

    artifacts = tmp_path / "artifacts"
    started = dt.datetime.now(dt.timezone.utc)
    first = _run(artifacts)

    # Every stage ran and the candidate was promoted as v1.
    assert first["decision"] == "promoted" and first["version"] == "v1"
    assert {stage: first["stages"][stage]["status"] for stage in STAGES} == dict.fromkeys(STAGES, "ran")
    clean = first["stages"]["clean"]
    assert clean["records_in"] == 800 == clean["kept"] + clean["quarantined"]
    metrics = json.loads((Path(first["stages"]["validate"]["path"]) / "metrics.json").read_text())
    matrix = np.array(metrics["confusion_matrix"])
    assert first["metrics"]["test_records"] == matrix.sum() > 100
    # (Two epochs of 9 steps leave batch norm's moving statistics near their start: this model is
    # near chance. The test is about the pipeline; the accuracy must be what the matrix says.)
    assert first["metrics"]["accuracy"] == np.trace(matrix) / matrix.sum()

    # Every artifact it promises exists and works.
    paths = first["artifacts"]
    for name in ("data_quality_report", "training_curves", "confusion_matrix", "validation_report", "onnx"):
        assert Path(paths[name]).is_file(), name
    assert (Path(paths["savedmodel"]) / "saved_model.pb").is_file()
    version = Path(paths["registry"])
    assert version == artifacts / "models" / "mnist5k" / "v1"
    for name in ("savedmodel/saved_model.pb", "model.onnx", "card.json", "model_card.md", "metrics.json",
                 "confusion_matrix.png", "training_curves.png", "parity.json"):
        assert (version / name).is_file(), name
    card = json.loads((version / "card.json").read_text())
    assert card["metrics"]["accuracy"] == first["metrics"]["accuracy"]
    assert set(card["lineage"]) == set(STAGES)
    assert card["decision"]["promote"] is True and card["config"]["train"]["epochs"] == 2
    champion = json.loads((artifacts / "models" / "mnist5k" / "champion.json").read_text())
    assert champion["version"] == "v1"
    per_class = json.loads((version / "metrics.json").read_text())["per_class"]
    assert [row["class"] for row in per_class] == [str(d) for d in range(10)]

    pixels = np.zeros((2, 28, 28, 1), np.float32)
    onnx_out = ort.InferenceSession(str(version / "model.onnx")).run(None, {"pixels": pixels})[0]
    tf_out = tf.saved_model.load(str(version / "savedmodel")).signatures["serving_default"](pixels=tf.constant(pixels))
    assert np.abs(onnx_out - tf_out["probabilities"].numpy()).max() <= 1e-5

    # An unchanged rerun reuses every stage and changes nothing.
    again = _run(artifacts)
    assert {stage: again["stages"][stage]["status"] for stage in STAGES} == dict.fromkeys(STAGES, "cached")
    assert again["decision"] == "promoted" and again["version"] == "v1"
    assert again["metrics"] == first["metrics"]

    # Each long stage reported its progress to the server as a progress artifact, finished at 100%: this
    # test's runs' artifacts (a test before it on this worker's server may have been killed mid-training).
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)))
        ours = ArtifactFilterFlowRunId(any_=[run.id for run in runs])
        found = client.read_artifacts(artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"]), flow_run_id=ours))
    progress = {a.key: a.data for a in found}
    assert {f"imgflow-progress-{stage}" for stage in ("download", "clean", "shard", "train")} <= set(progress)
    assert all(value == 100.0 for value in progress.values()), progress

    # More epochs retrain, validate again; a floor nobody clears rejects and keeps the champion.
    strict = _run(artifacts, epochs=3, min_accuracy=0.9999)
    statuses = {stage: strict["stages"][stage]["status"] for stage in STAGES}
    assert statuses == {"download": "cached", "clean": "cached", "drift": "cached", "audit": "cached", "shard": "cached",
                        "train": "ran", "validate": "ran", "export": "skipped"}
    assert strict["decision"] == "rejected" and strict["version"] is None
    assert any("< floor 0.9999" in reason for reason in strict["reasons"])
    assert strict["artifacts"]["savedmodel"] is None
    assert json.loads((artifacts / "models" / "mnist5k" / "champion.json").read_text())["version"] == "v1"
