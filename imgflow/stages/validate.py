"""validate: evaluate the candidate and the current champion on the same test split; decide promotion.

Output folder::

    metrics.json           accuracy, per-class precision/recall/F1, confusion matrix, the champion's
                           accuracy on the same records; for a model with text, ``modalities``: the
                           accuracy with both (= accuracy), with the image only (text blanked) and
                           with the text only (image blanked), on the same test records
    decision.json          promote (true/false), the reasons, and the numbers compared
    confusion_matrix.png   the candidate's confusion matrix on the test split
    misclassified.parquet  the hardest mistakes (most confident wrong answers, at most 24): id, label,
                           predicted, confidence, image (PNG), for the model report
    report.md              the above for a person

The champion is evaluated through its ONNX export, so any past model that takes the same input shape
(and text, if it reads text and the test split has it) can be compared, whatever code built it. The
gate's floor applies to the accuracy with every modality the model reads.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from imgflow import progress
from imgflow.config import GateConfig
from imgflow.gate import decide
from imgflow.images import encode_png
from imgflow.inference import OnnxModel
from imgflow.reports import confusion_matrix, per_class_markdown, per_class_metrics, plot_confusion_matrix
from imgflow.results import ShardInfo, StageResult, ValidateInfo, shard_files
from imgflow.store import Stage, write_json_atomic
from imgflow.text import VOCABULARY_FILE, TextEncoder, read_vocabulary



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


def _champion_model(champion: StageResult | None, shape: tuple[int, ...], has_text: bool) -> tuple[OnnxModel | None, str]:
    """The champion's ONNX export, or None and why not. The caller passes a champion only when it is
    another model (``imgflow.promote.versus_champion`` decides)."""
    if champion is None:
        return None, "none"
    model = OnnxModel(Path(champion.path) / "model.onnx", keep_memory=False)
    if model.image_shape != list(shape):
        return None, f"champion {champion.key} takes input {model.image_shape}, the test split is {list(shape)}: not comparable"
    if model.takes_text and not has_text:
        return None, f"champion {champion.key} reads text, the test split has none: not comparable"
    return model, f"champion {champion.key} evaluated on the same test split"


class _Candidate:
    """The trained Keras model's predictions on a batch: with every modality it reads and, for a model
    with text, with the text blanked and with the image blanked."""

    def __init__(self, model_dir: Path) -> None:
        from imgflow.models import load_model

        self.model = load_model(model_dir / "model.keras")
        self.encoder = None
        if isinstance(self.model.input, dict):
            length = int(self.model.input["tokens"].shape[1])
            self.encoder = TextEncoder(read_vocabulary(model_dir / VOCABULARY_FILE), length)

    def __call__(self, images: np.ndarray, texts: list[str] | None) -> dict[str, np.ndarray]:
        pixels = images.astype(np.float32)
        if self.encoder is None:
            return {"both": np.asarray(self.model.predict_on_batch(pixels))}
        tokens = self.encoder.ids(texts or [""] * len(images))
        blank_pixels, blank_tokens = np.zeros_like(pixels), np.zeros_like(tokens)
        return {
            name: np.asarray(self.model.predict_on_batch({"pixels": p, "tokens": t}))
            for name, p, t in (("both", pixels, tokens), ("image_only", pixels, blank_tokens), ("text_only", blank_pixels, tokens))
        }


def _build(out_dir: Path, config: GateConfig, inputs: Mapping[str, StageResult]) -> ValidateInfo:
    from imgflow.data import eval_batch, iter_batches

    shards, model_result = inputs["shards"], inputs["model"]
    assert isinstance(shards.info, ShardInfo), shards.stage
    shape = tuple(shards.info.image_shape)
    class_names = shards.info.class_names
    total = shards.info.splits["test"].records
    if total == 0:
        raise ValueError(f"the test split in {shards.path} is empty: nothing to validate on")
    candidate = _Candidate(Path(model_result.path))
    reads_text = candidate.encoder is not None
    champion, champion_note = _champion_model(inputs.get("champion"), shape, shards.info.text)
    # One pass over the test split, a batch at a time: only labels and predictions (one integer
    # each per record and modality) and the hardest mistakes are kept.
    labels_seen: list[np.ndarray] = []
    predicted: dict[str, list[np.ndarray]] = {}
    champion_predicted = []
    hardest = Hardest()
    with_text = shards.info.text and (reads_text or (champion is not None and champion.takes_text))
    for images, labels, ids, texts in iter_batches(shard_files(shards, "test"), shape, eval_batch(shape), text=with_text):
        outputs = candidate(images, texts)
        labels_seen.append(labels)
        for name, probabilities in outputs.items():
            predicted.setdefault(name, []).append(probabilities.argmax(axis=1))
        hardest.add(images, labels, outputs["both"], ids)
        if champion is not None:
            champion_predicted.append(champion(images, texts).argmax(axis=1))
        progress.report(hardest.seen, total, "test images")
    labels = np.concatenate(labels_seen)
    accuracies = {name: float((np.concatenate(found) == labels).mean()) for name, found in predicted.items()}
    predictions = np.concatenate(predicted["both"])
    accuracy = accuracies["both"]
    modalities = accuracies if reads_text else None
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
        "modalities": modalities,
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
                *(
                    [f"- image only (text blanked): {modalities['image_only']:.4f}; text only (image blanked): {modalities['text_only']:.4f}"]
                    if modalities else []
                ),
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
        modalities=modalities,
    )


VALIDATE = Stage("validate", "3", _build)
