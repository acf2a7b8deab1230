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
import heapq
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from imgflow import progress
from imgflow.config import GateConfig
from imgflow.gate import decide
from imgflow.images import encode_png
from imgflow.inference import onnx_predict, onnx_session
from imgflow.reports import confusion_matrix, per_class_markdown, per_class_metrics, plot_confusion_matrix
from imgflow.results import ShardInfo, StageResult, ValidateInfo, shard_files
from imgflow.store import Stage, write_json_atomic



class Hardest:
    """The ``limit`` most confident wrong predictions seen so far, kept in a bounded heap: memory holds
    ``limit`` images whatever the size of the test split."""

    def __init__(self, limit: int = 24) -> None:
        self.limit = limit
        self.heap: list[tuple[float, int, str, int, int, bytes]] = []  # confidence, -order, id, label, predicted, PNG
        self.seen = 0

    def add(self, images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, ids: list[str]) -> None:
        predictions, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
        for i in np.flatnonzero(predictions != labels):
            # Among equal confidences the earlier record stays, as a stable sort would keep it.
            item = (float(confidence[i]), -(self.seen + int(i)))
            if len(self.heap) < self.limit or item > self.heap[0][:2]:
                entry = (*item, ids[i], int(labels[i]), int(predictions[i]), encode_png(images[i]))
                (heapq.heappush if len(self.heap) < self.limit else heapq.heapreplace)(self.heap, entry)
        self.seen += len(labels)

    def write(self, path: Path, class_names: list[str]) -> None:
        """misclassified.parquet, hardest first."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = sorted(self.heap, reverse=True)
        pq.write_table(pa.table({
            "id": [r[2] for r in rows],
            "label": [class_names[r[3]] for r in rows],
            "predicted": [class_names[r[4]] for r in rows],
            "confidence": pa.array([r[0] for r in rows], pa.float64()),
            "image": pa.array([r[5] for r in rows], pa.binary()),
        }), path)


def _champion_session(champion: StageResult | None, shape: tuple[int, ...]) -> tuple[Any, str]:
    """An ONNX Runtime session on the champion, or None and why not. The caller passes a champion
    only when it is another model (``imgflow.promote.versus_champion`` decides)."""
    if champion is None:
        return None, "none"
    session = onnx_session(Path(champion.path) / "model.onnx", keep_memory=False)
    expected = session.get_inputs()[0].shape[1:]
    if list(expected) != list(shape):
        return None, f"champion {champion.key} takes input {expected}, the test split is {list(shape)}: not comparable"
    return session, f"champion {champion.key} evaluated on the same test split"


def _build(out_dir: Path, config: GateConfig, inputs: Mapping[str, StageResult]) -> ValidateInfo:
    import keras

    from imgflow.data import eval_batch, iter_batches

    shards, model_result = inputs["shards"], inputs["model"]
    assert isinstance(shards.info, ShardInfo), shards.stage
    shape = tuple(shards.info.image_shape)
    class_names = shards.info.class_names
    total = shards.info.splits["test"].records
    if total == 0:
        raise ValueError(f"the test split in {shards.path} is empty: nothing to validate on")
    model = keras.models.load_model(model_result.file("model.keras"))
    champion, champion_note = _champion_session(inputs.get("champion"), shape)
    # One pass over the test split, a batch at a time: only labels and predictions (one integer
    # each per record) and the hardest mistakes are kept.
    labels_seen, predicted, champion_predicted = [], [], []
    hardest = Hardest()
    for images, labels, ids in iter_batches(shard_files(shards, "test"), shape, eval_batch(shape)):
        probabilities = np.asarray(model.predict_on_batch(images.astype(np.float32)))
        labels_seen.append(labels)
        predicted.append(probabilities.argmax(axis=1))
        hardest.add(images, labels, probabilities, ids)
        if champion is not None:
            champion_predicted.append(onnx_predict(champion, images).argmax(axis=1))
        progress.report(hardest.seen, total, "test images")
    labels, predictions = np.concatenate(labels_seen), np.concatenate(predicted)
    accuracy = float((predictions == labels).mean())
    matrix = confusion_matrix(labels, predictions, len(class_names))
    per_class = per_class_metrics(labels, predictions, class_names)
    champion_accuracy = float((np.concatenate(champion_predicted) == labels).mean()) if champion is not None else None
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
    hardest.write(out_dir / "misclassified.parquet", class_names)
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


VALIDATE = Stage("validate", "3", _build)
