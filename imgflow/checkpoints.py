"""Per-epoch training checkpoints that a killed run resumes from.

A checkpoint folder holds ``epoch-NNNN.keras`` (the whole model, optimizer state included, so the
learning-rate schedule continues where it stopped) and ``progress.json``, the commit point: it names
the last completed epoch, its checkpoint file and the history so far, and is replaced atomically. A
kill at any moment leaves the previous record or the new one, each pointing at a complete file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras

from imgflow import progress
from imgflow.store import write_json_atomic

PROGRESS = "progress.json"


def load_progress(folder: Path) -> dict[str, Any] | None:
    """The last completed epoch's record in ``folder``, or None to start from scratch."""
    path = folder / PROGRESS
    if not path.is_file():
        return None
    progress = json.loads(path.read_text())
    return progress if (folder / progress["checkpoint"]).is_file() else None


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: save the model to a new file, then swap ``progress.json`` in."""

    def __init__(self, folder: Path, history: dict[str, list[float]]) -> None:
        super().__init__()
        self.folder = folder
        self.history = history

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        name = f"epoch-{epoch + 1:04d}.keras"
        self.model.save(self.folder / name)
        write_json_atomic(self.folder / PROGRESS, {"epoch": epoch + 1, "checkpoint": name, "history": self.history})
        for old in self.folder.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink()


class EpochProgress(keras.callbacks.Callback):
    """Reports each finished epoch to ``imgflow.progress`` (a progress bar, a Prefect artifact, and
    the epoch's metrics to an epoch listener). It runs after the checkpoint: a listener that stops the
    training stops it after a committed epoch."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        progress.report(epoch + 1, self.epochs, "epochs")
        progress.epoch_done(epoch + 1, {name: float(value) for name, value in (logs or {}).items()})
