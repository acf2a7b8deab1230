"""validate: evaluate the candidate and the current champion on the same test split; decide promotion.

Output folder::

    metrics.json           accuracy, per-class precision/recall/F1, confusion matrix, the champion's
                           accuracy on the same records, the gate's ``metric`` and its figure (with
                           ``[gate] metric`` other than accuracy); for a model with text, ``modalities``: the
                           accuracy with both (= accuracy), with the image only (text blanked) and
                           with the text only (image blanked), on the same test records
    decision.json          promote (true/false), the reasons, and the numbers compared
    confusion_matrix.png   the candidate's confusion matrix on the test split
    tensorboard/           it and the most confident mistakes as TensorBoard images
    misclassified.parquet  the hardest mistakes (most confident wrong answers, at most 24): id, label,
                           predicted, confidence, image (PNG), heatmap (PNG: the image under the
                           Grad-CAM heatmap of the predicted class, ``imgflow.training.explain``; null for a
                           model without a top-level convolution), for the model report
    exemplars.parquet      the same for the most confident right answers, two per class
    report.md              the above for a person

The champion is evaluated through its ONNX export, so any past model that takes the same input shape
(and text, if it reads text and the test split has it) can be compared, whatever code built it. The
gate's floor applies to the figure with every modality the model reads: ``[gate] metric``
(``imgflow.registry.gate.score``), accuracy by default, for the candidate and the champion alike.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from imgflow.config import GateConfig
from imgflow.data.images import encode_png
from imgflow.data.partitions import slice_of
from imgflow.data.text import VOCABULARY_FILE, TextEncoder, read_vocabulary
from imgflow.registry.gate import Paired, decide, paired, score
from imgflow.reporting.reports import confusion_matrix, per_class_markdown, per_class_metrics, plot_confusion_matrix
from imgflow.results import DriftInfo, PairedCounts, ShardInfo, StageResult, ValidateInfo, shard_files
from imgflow.runtime import progress
from imgflow.serving.inference import OnnxModel
from imgflow.store.files import file_table, write_json_atomic
from imgflow.store.fingerprint import stable_hash
from imgflow.store.stage import Stage
from imgflow.training.tensorboard_logs import FOLDER as TENSORBOARD
from imgflow.training.tensorboard_logs import write_images


@dataclasses.dataclass(order=True)
class Kept:
    """A test record kept for the report: ordered by confidence, then earlier first."""

    confidence: float
    order: int  # minus the record's position: among equal confidences the earlier record ranks higher
    id: str = dataclasses.field(compare=False)
    label: int = dataclasses.field(compare=False)
    predicted: int = dataclasses.field(compare=False)
    pixels: np.ndarray = dataclasses.field(compare=False, repr=False)
    text: str | None = dataclasses.field(compare=False, default=None)


class Ranked:
    """The ``limit`` highest-ranked records offered so far, in a bounded heap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.heap: list[Any] = []

    def offer(self, item: Kept) -> None:
        if len(self.heap) < self.limit:
            heapq.heappush(self.heap, item)
        elif item > self.heap[0]:
            heapq.heapreplace(self.heap, item)

    def best_first(self) -> list[Kept]:
        return sorted(self.heap, reverse=True)


class Hardest:
    """The ``limit`` most confident wrong predictions seen so far, and the ``per_class`` most confident
    right ones of each class: bounded heaps, so memory holds a few dozen images whatever the size of
    the test split."""

    def __init__(self, limit: int = 24, per_class: int = 2) -> None:
        self.wrong = Ranked(limit)
        self.per_class = per_class
        self.right: dict[int, Ranked] = {}
        self.seen = 0

    def add(
        self, images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, ids: list[str], texts: list[str] | None = None
    ) -> None:
        predictions, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
        for i in range(len(labels)):
            kept = Kept(
                float(confidence[i]),
                -(self.seen + i),
                ids[i],
                int(labels[i]),
                int(predictions[i]),
                images[i],
                texts[i] if texts is not None else None,
            )
            if predictions[i] != labels[i]:
                self.wrong.offer(kept)
            else:
                self.right.setdefault(int(labels[i]), Ranked(self.per_class)).offer(kept)
        self.seen += len(labels)

    def write(self, folder: Path, class_names: list[str], heatmaps: Any | None) -> None:
        """misclassified.parquet (hardest first) and exemplars.parquet (by class), with Grad-CAM
        overlays when ``heatmaps`` (``imgflow.training.explain.explain`` bound to the model) is given."""
        right = [item for label in sorted(self.right) for item in self.right[label].best_first()]
        for name, items in (("misclassified.parquet", self.wrong.best_first()), ("exemplars.parquet", right)):
            _write_kept(folder / name, items, class_names, heatmaps)


def _write_kept(path: Path, items: list[Kept], class_names: list[str], heatmaps: Any | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    overlays = heatmaps(items) if heatmaps is not None and items else [None] * len(items)
    pq.write_table(
        pa.table(
            {
                "id": [r.id for r in items],
                "label": [class_names[r.label] for r in items],
                "predicted": [class_names[r.predicted] for r in items],
                "confidence": pa.array([r.confidence for r in items], pa.float64()),
                "image": pa.array([encode_png(r.pixels) for r in items], pa.binary()),
                "heatmap": pa.array(overlays, pa.binary()),
            }
        ),
        path,
    )


def _champion_model(champion: StageResult | None, shape: tuple[int, ...], has_text: bool) -> tuple[OnnxModel | None, str]:
    """The champion's ONNX export, or None and why not. The caller passes a champion only when it is
    another model (``imgflow.registry.promote.versus_champion`` decides)."""
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
        from imgflow.training.models import load_model

        self.model = load_model(model_dir / "model.keras", compile=False)
        self.encoder = None
        if isinstance(self.model.input, dict):
            length = int(self.model.input["tokens"].shape[1])
            self.encoder = TextEncoder(read_vocabulary(model_dir / VOCABULARY_FILE), length)

    def heatmaps(self) -> Any | None:
        """A function from kept records to Grad-CAM overlays of their predicted class (None when the
        model has no top-level convolution to explain: ``imgflow.training.explain``)."""
        from imgflow.training.explain import explain, explainer

        cam = explainer(self.model)
        if cam is None:
            return None

        def overlays(items: list[Kept]) -> list[bytes]:
            images = np.stack([item.pixels for item in items])
            inputs: Any = images.astype(np.float32)
            if self.encoder is not None:
                inputs = {"pixels": inputs, "tokens": self.encoder.ids([item.text or "" for item in items])}
            return explain(cam, inputs, images, np.array([item.predicted for item in items]))

        return overlays

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


def drifted(inputs: Mapping[str, StageResult]) -> dict[str, list[str]]:
    """The drift results among ``inputs`` that drifted (``drift``, or ``drift:<date>`` per partition),
    by what drifted, with the checks that did."""
    found = {}
    for name, result in inputs.items():
        if name == "drift" or name.startswith("drift:"):
            assert isinstance(result.info, DriftInfo), result.stage
            if result.info.drifted:
                found["the data" if name == "drift" else f"partition {name.partition(':')[2]}"] = result.info.reasons
    return found


def _per_slice(slices: np.ndarray | None, labels: np.ndarray, predictions: np.ndarray, comparison: Paired | None) -> dict[str, Any] | None:
    """Each slice's records and test accuracy, and the champion's on the same records when there is one."""
    if slices is None:
        return None
    rival = {s.name: s.champion_accuracy for s in comparison.slices} if comparison is not None else {}
    found = {}
    for name in sorted(set(slices.tolist())):
        mine = slices == name
        found[name] = {
            "records": int(mine.sum()),
            "accuracy": float((predictions[mine] == labels[mine]).mean()),
            "champion_accuracy": rival.get(name),
        }
    return found


def _slices_markdown(key: str | None, per_slice: Mapping[str, Any]) -> list[str]:
    lines = [f"## Per slice ({key})", "", "| slice | records | accuracy | champion |", "|---|---|---|---|"]
    for name, row in per_slice.items():
        champion = f"{row['champion_accuracy']:.4f}" if row["champion_accuracy"] is not None else ""
        lines.append(f"| {name} | {row['records']} | {row['accuracy']:.4f} | {champion} |")
    return [*lines, ""]


def _build(out_dir: Path, config: GateConfig, inputs: Mapping[str, StageResult]) -> ValidateInfo:
    from imgflow.training.inputs import eval_batch, iter_batches

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
    slice_names: dict[str, int] = {}  # with [gate] slice_by: each record's slice, as a code
    slice_codes: list[np.ndarray] = []
    hardest = Hardest()
    with_text = shards.info.text and (reads_text or (champion is not None and champion.takes_text))
    for images, labels, ids, texts in iter_batches(shard_files(shards, "test"), shape, eval_batch(shape), text=with_text):
        outputs = candidate(images, texts)
        labels_seen.append(labels)
        for name, probabilities in outputs.items():
            predicted.setdefault(name, []).append(probabilities.argmax(axis=1))
        hardest.add(images, labels, outputs["both"], ids, texts)
        if config.slice_by is not None:
            slice_codes.append(np.array([slice_names.setdefault(slice_of(i, config.slice_by), len(slice_names)) for i in ids]))
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
    slices = np.array(list(slice_names), dtype=object)[np.concatenate(slice_codes)] if slice_codes else None
    comparison = paired(labels, predictions, np.concatenate(champion_predicted), class_names, slices) if champion is not None else None
    per_slice = _per_slice(slices, labels, predictions, comparison)
    # The gate's figure ([gate] metric): accuracy, or a balanced one, for the candidate and the champion alike.
    judged = score(config.metric, labels, predictions, len(class_names))
    champion_judged = score(config.metric, labels, np.concatenate(champion_predicted), len(class_names)) if champion is not None else None
    decision = decide(judged, champion_judged, config, comparison, drifted(inputs))
    metrics = {
        "accuracy": accuracy,
        "metric": config.metric,
        config.metric: judged,
        "test_records": len(labels),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "class_names": class_names,
        "champion_accuracy": champion_accuracy,
        "champion": champion_note,
        "modalities": modalities,
        "paired": dataclasses.asdict(comparison) if comparison is not None else None,
        "slices": per_slice,
    }
    write_json_atomic(out_dir / "metrics.json", metrics)
    hardest.write(out_dir, class_names, candidate.heatmaps())
    write_json_atomic(out_dir / "decision.json", dataclasses.asdict(decision))
    plot_confusion_matrix(matrix, class_names, out_dir / "confusion_matrix.png", f"Test accuracy {accuracy:.4f}")
    write_images(
        out_dir,
        {
            "confusion_matrix": [(out_dir / "confusion_matrix.png").read_bytes()],
            "most_confident_mistakes": np.stack([item.pixels for item in hardest.wrong.best_first()[:8]]) if hardest.wrong.heap else [],
        },
    )
    verdict = "PROMOTE" if decision.promote else "REJECT"
    (out_dir / "report.md").write_text(
        "\n".join(
            [
                f"# Validation: {verdict}",
                "",
                f"- test accuracy: **{accuracy:.4f}** on {len(labels)} records",
                *([f"- test {config.metric} (what the gate judges): **{judged:.4f}**"] if config.metric != "accuracy" else []),
                *(
                    [
                        f"- image only (text blanked): {modalities['image_only']:.4f}; text only (image blanked): {modalities['text_only']:.4f}"
                    ]
                    if modalities
                    else []
                ),
                f"- champion: {champion_note}" + (f", accuracy {champion_accuracy:.4f}" if champion_accuracy is not None else ""),
                *[f"- {reason}" for reason in decision.reasons],
                "",
                "## Per class",
                "",
                per_class_markdown(per_class),
                "",
                *(_slices_markdown(config.slice_by, per_slice) if per_slice else []),
            ]
        )
    )
    # Its content, without TensorBoard's event files (which hold wall times and the host's name): the
    # same inputs give the same fingerprint, as for every other stage.
    decided = {name: meta for name, meta in file_table(out_dir).items() if not name.startswith(f"{TENSORBOARD}/")}
    return ValidateInfo(
        content_fingerprint=stable_hash(decided),
        accuracy=accuracy,
        test_records=len(labels),
        champion_accuracy=champion_accuracy,
        champion=champion_note,
        promote=decision.promote,
        reasons=list(decision.reasons),
        modalities=modalities,
        slices=per_slice,
        paired=PairedCounts(
            p_worse=comparison.p_worse,
            p_better=comparison.p_better,
            candidate_only=comparison.candidate_only,
            champion_only=comparison.champion_only,
        )
        if comparison is not None
        else None,
    )


VALIDATE = Stage("validate", "6", _build, tensorflow=True)
