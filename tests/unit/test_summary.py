"""The run summary from typed stage results: decision, stages, partitions, artifacts."""

from __future__ import annotations

from typing import Any

from imgflow.pipeline.summary import build_summary, summary_markdown
from imgflow.results import StageResult
from imgflow.store.artifacts import ArtifactStore

CLEAN = {
    "source": "test:x", "records_in": 10, "kept": 8, "quarantined": 2, "quarantine_reasons": {"empty": 2},
    "image_shape": [8, 8, 1], "class_names": ["a", "b"], "splits": {"train": 6, "test": 2},
    "per_class": {"a": {"train": 3, "val": 0, "test": 1}, "b": {"train": 3, "val": 0, "test": 1}},
    "source_images": {"modes": {"L": 8}, "size_counts": {"8x8": 8}}, "split_rule": {}, "data_fingerprint": "d",
}
TRAIN = {"epochs": 2, "resumed_from_epoch": 0, "train_records": 6, "parameters": 10, "final": {"loss": 0.5},
         "hardware": {"strategy": "default", "precision": "float32", "jit_compile": False, "replicas": 1, "workers": 1,
                      "augment_on_device": False}}
INFOS: dict[str, dict[str, Any]] = {
    "download": {"records": 10, "source": "test:x"},
    "clean": CLEAN,
    "merge": CLEAN,
    "shard": {"image_shape": [8, 8, 1], "class_names": ["a", "b"], "data_fingerprint": "d", "splits": {}},
    "train": TRAIN,
    "audit": {"records": 8, "embeddings": "pixels", "label_issues": 1, "near_duplicates": 2, "cross_split": 1, "outliers": 0,
              "examples": {"label_issues": [{"id": "r1", "split": "train", "label": "a", "suggested": "b", "score": 0.01}]}, "note": ""},
    "export": {"opset": 17, "parity": {"max_abs_diff": 0.0, "tolerance": 1e-5, "batch": 2, "same_top1": True}, "int8": None},
}


def _result(stage: str, status: str = "ran", **info: Any) -> StageResult:
    return StageResult(stage=stage, key=f"{stage}-key", path=f"/a/{stage}", fingerprint=f"{stage}-fp", status=status,
                       info={**INFOS.get(stage, {}), **info})


def _validate(promote: bool) -> StageResult:
    return _result("validate", accuracy=0.9, test_records=2, champion_accuracy=None, champion="none", promote=promote,
                   reasons=["accuracy 0.9000 >= floor 0.5000", "no champion yet"])


def test_a_promoted_run() -> None:
    results = {s: _result(s) for s in ("download", "clean", "shard", "train", "export")} | {"validate": _validate(True)}
    champion = {"version": "v1", "model_fingerprint": "train-fp", "path": "/a/models/m/v1"}
    summary = build_summary("m", ArtifactStore("/a"), results, champion, 1.234).as_json()
    assert (summary["decision"], summary["version"], summary["seconds"]) == ("promoted", "v1", 1.23)
    assert list(summary["stages"]) == ["download", "clean", "drift", "audit", "shard", "train", "validate", "export"]
    assert summary["stages"]["clean"]["records_in"] == 10 and summary["stages"]["clean"]["class_balance"] == {"a": 4, "b": 4}
    assert summary["stages"]["train"]["resumed_from_epoch"] == 0
    assert summary["artifacts"]["model_report"] == "/a/models/m/v1/report.html"
    assert "PROMOTED as v1" in summary_markdown(summary)


def test_a_rejected_run_keeps_the_old_champion_and_exports_nothing() -> None:
    results = {s: _result(s, "cached") for s in ("download", "clean", "shard", "train")} | {"validate": _validate(False)}
    champion = {"version": "v1", "model_fingerprint": "older", "path": "/a/models/m/v1"}
    summary = build_summary("m", ArtifactStore("/a"), results, champion, 1.0).as_json()
    assert (summary["decision"], summary["version"]) == ("rejected", None)
    assert summary["stages"]["export"] == {"status": "skipped"} and summary["artifacts"]["savedmodel"] is None
    assert summary["stages"]["train"]["resumed_from_epoch"] is None  # it did not train in this run


def test_a_run_stopped_by_until_says_so() -> None:
    results = {s: _result(s) for s in ("download", "clean", "shard")}
    summary = build_summary("m", ArtifactStore("/a"), results, None, 1.0, until="shard").as_json()
    assert summary["decision"] == "stopped" and summary["reasons"] == ["stopped after shard (--until): nothing was validated"]
    assert summary["metrics"] == {"accuracy": None, "test_records": None, "champion_accuracy": None}
    assert [s for s, e in summary["stages"].items() if e["status"] == "skipped"] == ["drift", "audit", "train", "validate", "export"]
    assert "STOPPED" in summary_markdown(summary)


def test_a_partitioned_run_lists_partitions_and_the_merge() -> None:
    parts = {
        "2024-05-01": {"download": _result("download", "cached"), "clean": _result("clean", "cached")},
        "2024-05-02": {"download": _result("download", "cached"), "clean": _result("clean", "ran")},
    }
    results = {s: _result(s) for s in ("merge", "shard", "train", "export")} | {"validate": _validate(True)}
    summary = build_summary("m", ArtifactStore("/a"), results, None, 1.0, parts).as_json()
    assert list(summary["stages"]) == ["download", "clean", "drift", "audit", "merge", "shard", "train", "validate", "export"]
    assert summary["partitions"] == {"2024-05-01": "cached", "2024-05-02": "ran"}
    assert summary["stages"]["download"] == {"status": "cached", "partitions": 2, "keys": ["download-key"] * 2}
    assert summary["stages"]["clean"]["status"] == "ran" and summary["stages"]["clean"]["records_in"] == 10
    assert summary["stages"]["merge"]["key"] == "merge-key"
    assert summary["artifacts"]["data_quality_report"] == "/a/merge/report.md"


def test_train_against_validation_accuracy_says_whether_the_model_underfits() -> None:
    from imgflow.pipeline.summary import fit

    assert fit({"accuracy": 0.918, "val_accuracy": 0.9165})["verdict"].startswith("underfits")
    assert fit({"accuracy": 0.99, "val_accuracy": 0.90})["verdict"].startswith("overfits")
    assert fit({"accuracy": 0.95, "val_accuracy": 0.94})["verdict"].startswith("fits")
    assert fit({"loss": 0.1}) is None


def test_the_audit_is_counted_over_partitions_and_in_the_markdown() -> None:
    parts = {
        day: {"download": _result("download", "cached"), "clean": _result("clean", "cached"), "audit": _result("audit", "ran")}
        for day in ("2024-05-01", "2024-05-02")
    }
    results = {s: _result(s) for s in ("merge", "shard", "train", "export")} | {"validate": _validate(True)}
    summary = build_summary("m", ArtifactStore("/a"), results, None, 1.0, parts).as_json()
    audit = summary["audit"]
    assert (audit["label_issues"], audit["near_duplicates"], audit["cross_split"], audit["outliers"]) == (2, 4, 2, 0)
    assert set(audit["checks"]) == {"2024-05-01", "2024-05-02"} and audit["checks"]["2024-05-01"]["report"] == "/a/audit/report.html"
    assert audit["checks"]["2024-05-02"]["examples"]["label_issues"][0]["suggested"] == "b"
    assert "- audit: 2 suspected label errors, 4 near-duplicate pairs (2 across splits), 0 outliers" in summary_markdown(summary)
    whole = build_summary("m", ArtifactStore("/a"), {**results, "audit": _result("audit")}, None, 1.0).as_json()
    assert set(whole["audit"]["checks"]) == {"all"} and whole["artifacts"]["audit_report"] == "/a/audit/report.html"
