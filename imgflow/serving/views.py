"""A model's view of held-out records: its penultimate-layer embeddings, its predictions and the true
labels, from its ONNX export.

The champion's view of its own held-out data (``reference.npz``: written by export, registered with the
model) is what a drift check compares a new partition's view with (``imgflow.stages.drift``): the
embeddings say whether the model sees the new data where it saw the old, the predictions whether it
still gets them right. Held-out records only (the val and test splits): the model never trained on
them, old or new, so its confidence on seen records cannot pass for drift.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgflow.serving.inference import OnnxModel

REFERENCE_FILE = "reference.npz"
REFERENCE_RECORDS = 1000  # held-out records in the champion's own view: enough for a two-sample test
HELD_OUT = ("val", "test")


@dataclass(frozen=True)
class ModelView:
    """What a model makes of some records: ``labels`` index the model's ``class_names`` (-1: a class
    it does not know), ``predicted`` its answers, ``embeddings`` its penultimate layer (one row each)."""

    class_names: list[str]
    embeddings: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def right(self) -> tuple[int, int]:
        """Records it gets right, of those whose class it knows."""
        known = self.labels >= 0
        return int((self.predicted[known] == self.labels[known]).sum()), int(known.sum())

    def write(self, path: Path) -> None:
        with path.open("wb") as file:
            np.savez(
                file,
                embeddings=self.embeddings,
                labels=self.labels,
                predicted=self.predicted,
                class_names=np.array(self.class_names, dtype=str),
            )


def read_view(path: Path) -> ModelView:
    with np.load(path, allow_pickle=False) as data:
        return ModelView([str(n) for n in data["class_names"]], data["embeddings"], data["labels"], data["predicted"])


def model_view(
    model: OnnxModel, class_names: Sequence[str], batches: Iterable[tuple[np.ndarray, Sequence[str], Sequence[str] | None]], limit: int
) -> ModelView:
    """``model`` (opened with ``embeddings=True``) on up to ``limit`` records from ``batches`` of
    (pixels, label names, texts or None); ``class_names`` are the model's, in its output order."""
    index = {name: i for i, name in enumerate(class_names)}
    embeddings, labels, predicted = [], [], []
    taken = 0
    for images, names, texts in batches:
        room = limit - taken
        if room <= 0:
            break
        images, names = images[:room], list(names)[:room]
        features, probabilities = model.embed(images, None if texts is None else list(texts)[:room])
        embeddings.append(features)
        predicted.append(probabilities.argmax(axis=1))
        labels.append(np.array([index.get(name, -1) for name in names], np.int64))
        taken += len(names)
    if not labels:
        return ModelView(list(class_names), np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return ModelView(list(class_names), np.concatenate(embeddings), np.concatenate(labels), np.concatenate(predicted))


def unless_learned_from(inputs: Mapping[str, Any]) -> Mapping[str, Any]:
    """A stage's inputs without its ``reference`` (the champion) when the champion learned from this very
    ``data`` (its card's ``learned_from``): nothing is new to it, and its view of records it was trained
    on judges nothing. The key is then the one with no champion, so a rerun after a promotion reuses the
    stage's output, as it reuses everything else (the drift and audit stages' ``relevant``)."""
    champion = inputs.get("reference")
    if champion is not None and inputs["data"].fingerprint in (getattr(champion.info, "learned_from", None) or []):
        return {name: value for name, value in inputs.items() if name != "reference"}
    return inputs
