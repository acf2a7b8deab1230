"""validate: evaluate the candidate and the current champion on the same test split; decide promotion.

Output folder::

    metrics.json           accuracy, per-class precision/recall/F1, confusion matrix, the champion's
                           accuracy on the same records
    decision.json          promote (true/false), the reasons, and the numbers compared
    confusion_matrix.png   the candidate's confusion matrix on the test split
    misclassified.parquet  the hardest mistakes (most confident wrong answers, at most 24): id, label,
                           predicted, confidence, image (PNG), for the model report
    report.md              the above for a person

The champion is evaluated through its ONNX export, so any past model that takes the same input shape
can be compared, whatever code built it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from imgflow.config import GateConfig
from imgflow.gate import decide
from imgflow.images import encode_png
from imgflow.inference import onnx_predict, onnx_session
from imgflow.reports import confusion_matrix, per_class_markdown, per_class_metrics, plot_confusion_matrix
from imgflow.results import ShardInfo, StageResult, ValidateInfo, shard_files
from imgflow.store import Stage, write_json_atomic


def write_misclassified(
    path: Path, images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, ids: list[str],
    class_names: list[str], limit: int = 24,
) -> None:
    """The ``limit`` most confident wrong predictions, hardest first, with their images as PNG."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    predictions = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    hardest = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]
    table = pa.table(
        {
            "id": [ids[i] for i in hardest],
            "label": [class_names[labels[i]] for i in hardest],
            "predicted": [class_names[predictions[i]] for i in hardest],
            "confidence": pa.array([float(confidence[i]) for i in hardest], pa.float64()),
            "image": pa.array([encode_png(images[i]) for i in hardest], pa.binary()),
        }
    )
    pq.write_table(table, path)


def _champion_accuracy(champion: StageResult | None, images: np.ndarray, labels: np.ndarray) -> tuple[float | None, str]:
    """The champion's accuracy on the same test records, and what was evaluated. The caller passes a
    champion only when it is another model (``imgflow.promote.versus_champion`` decides)."""
    if champion is None:
        return None, "none"
    session = onnx_session(Path(champion.path) / "model.onnx")
    expected = session.get_inputs()[0].shape[1:]
    if list(expected) != list(images.shape[1:]):
        return None, f"champion {champion.key} takes input {expected}, the test split is {list(images.shape[1:])}: not comparable"
    predictions = onnx_predict(session, images).argmax(axis=1)
    return float((predictions == labels).mean()), f"champion {champion.key} evaluated on the same test split"


def _build(out_dir: Path, config: GateConfig, inputs: Mapping[str, StageResult]) -> ValidateInfo:
    import keras

    from imgflow.data import load_arrays

    shards, model_result = inputs["shards"], inputs["model"]
    assert isinstance(shards.info, ShardInfo), shards.stage
    shape = tuple(shards.info.image_shape)
    class_names = shards.info.class_names
    images, labels, ids = load_arrays(shard_files(shards, "test"), shape)
    if len(labels) == 0:
        raise ValueError(f"the test split in {shards.path} is empty: nothing to validate on")
    model = keras.models.load_model(model_result.file("model.keras"))
    probabilities = model.predict(images.astype(np.float32), batch_size=512, verbose=0)
    predictions = probabilities.argmax(axis=1)
    accuracy = float((predictions == labels).mean())
    matrix = confusion_matrix(labels, predictions, len(class_names))
    per_class = per_class_metrics(labels, predictions, class_names)

    champion_accuracy, champion_note = _champion_accuracy(inputs.get("champion"), images, labels)
    decision = decide(accuracy, champion_accuracy, config)
    metrics = {
        "accuracy": accuracy,
        "test_records": int(len(labels)),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "class_names": class_names,
        "champion_accuracy": champion_accuracy,
        "champion": champion_note,
    }
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_misclassified(out_dir / "misclassified.parquet", images, labels, probabilities, ids, class_names)
    write_json_atomic(out_dir / "decision.json", dataclasses.asdict(decision))
    plot_confusion_matrix(matrix, class_names, out_dir / "confusion_matrix.png", f"Test accuracy {accuracy:.4f}")
    verdict = "PROMOTE" if decision.promote else "REJECT"
    (out_dir / "report.md").write_text(
        "\n".join(
            [
                f"# Validation: {verdict}",
                "",
                f"- test accuracy: **{accuracy:.4f}** on {len(labels)} records",
                f"- champion: {champion_note}"
                + (f", accuracy {champion_accuracy:.4f}" if champion_accuracy is not None else ""),
                *[f"- {reason}" for reason in decision.reasons],
                "",
                "## Per class",
                "",
                per_class_markdown(per_class),
                "",
            ]
        )
    )
    return ValidateInfo(
        accuracy=accuracy,
        test_records=int(len(labels)),
        champion_accuracy=champion_accuracy,
        champion=champion_note,
        promote=decision.promote,
        reasons=list(decision.reasons),
    )


VALIDATE = Stage("validate", "2", _build)
