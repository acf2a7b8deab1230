"""Per-epoch training checkpoints that a killed run resumes from.

A checkpoint folder holds ``epoch-NNNN.keras`` (the whole model, optimizer state included, so the
learning-rate schedule continues where it stopped) and ``progress.json``, the commit point: it names
the last completed epoch, its checkpoint file and the history so far, and is replaced atomically. A
kill at any moment leaves the previous record or the new one, each pointing at a complete file.

On an object-store artifact root the folder is also kept in the build's shared scratch there
(``<root>/train/.work-<key>/``, ``CheckpointMirror``): every epoch's new files are uploaded, then
``progress.json``, so the copy in the bucket is always a committed epoch. A machine that takes the
build over from a dead one (its lease expired) brings that copy in first and resumes from it, as the
same machine would from its own folder. The store removes both once the model is published.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras

from imgflow.runtime import progress, stopping
from imgflow.store.files import write_bytes_atomic, write_json_atomic
from imgflow.store.objectstore import ObjectRoot

PROGRESS = "progress.json"


def load_progress(folder: Path) -> dict[str, Any] | None:
    """The last completed epoch's record in ``folder``, or None to start from scratch."""
    path = folder / PROGRESS
    if not path.is_file():
        return None
    progress = json.loads(path.read_text())
    return progress if (folder / progress["checkpoint"]).is_file() else None


class CheckpointMirror:
    """The checkpoint folder's copy at ``uri`` (an object-store folder): ``pull`` brings it into a
    local folder that has no progress of its own, ``push`` sends what changed, ``progress.json`` last."""

    def __init__(self, uri: str) -> None:
        parent, _, self.name = uri.rstrip("/").rpartition("/")
        self.objects = ObjectRoot(parent)
        self.sent: dict[str, tuple[int, int]] = {}  # name -> (size, mtime) of what the store holds

    def pull(self, folder: Path) -> None:
        if (folder / PROGRESS).is_file():
            return
        names = self.objects.files(self.name)
        data = self.objects.read_bytes(f"{self.name}/{PROGRESS}") if PROGRESS in names else None
        if data is None:
            return
        files = [n for n in names if n != PROGRESS and "/" not in n]
        self.objects.download(self.name, files, folder)
        write_bytes_atomic(folder / PROGRESS, data)  # last: the commit point here too
        self.sent = {n: _stamp(folder / n) for n in [*files, PROGRESS]}

    def push(self, folder: Path) -> None:
        present = {p.name: _stamp(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
        changed = [n for n, stamp in sorted(present.items()) if n != PROGRESS and self.sent.get(n) != stamp]
        self.objects.upload(folder, changed, self.name)
        self.objects.upload(folder, [PROGRESS], self.name)
        for gone in set(self.sent) - set(present):
            self.objects.delete(f"{self.name}/{gone}")
        self.sent = present


def _stamp(path: Path) -> tuple[int, int]:
    found = path.stat()
    return found.st_size, found.st_mtime_ns


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: save the model (``whole``, when the model being fit is only its head) to a
    new file, then swap ``progress.json`` in (and send both to the ``mirror``, when there is one)."""

    def __init__(self, folder: Path, history: dict[str, list[float]], mirror: CheckpointMirror | None = None) -> None:
        super().__init__()
        self.folder = folder
        self.history = history
        self.mirror = mirror
        self.whole: keras.Model | None = None  # what to save when the model being fit is a part of it

    def saved(self) -> keras.Model:
        return self.whole if self.whole is not None else self.model

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        name = f"epoch-{epoch + 1:04d}.keras"
        self.saved().save(self.folder / name)
        write_json_atomic(self.folder / PROGRESS, {"epoch": epoch + 1, "checkpoint": name, "history": self.history})
        for old in self.folder.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink()
        if self.mirror is not None:
            self.mirror.push(self.folder)
        stopping.epoch_committed(epoch + 1)


class StopOnRequest(keras.callbacks.Callback):
    """Ends training within one batch (training or validation) of a requested stop (``imgflow.runtime.stopping``:
    Ctrl-C, SIGTERM), raising ``Stopped``; the epochs already committed stay for the rerun."""

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        stopping.check()

    def on_test_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        stopping.check()


class EpochProgress(keras.callbacks.Callback):
    """Reports each finished epoch to ``imgflow.runtime.progress`` (a progress bar, a Prefect artifact, and
    the epoch's metrics to an epoch listener). It runs after the checkpoint: a listener that stops the
    training stops it after a committed epoch."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        progress.report(epoch + 1, self.epochs, "epochs")
        progress.epoch_done(epoch + 1, {name: float(value) for name, value in (logs or {}).items()})


class StepProgress(keras.callbacks.Callback):
    """Inside long epochs, every ``every`` seconds: the step, images a second, and with a ``deadline``
    (the seconds training was given) the time left; once past the deadline it stops training at the
    end of the step, so a plan that misjudged this machine's speed still keeps the run's budget."""

    def __init__(self, epochs: int, steps_per_epoch: int, batch: int, deadline: float | None, every: float = 30.0) -> None:
        super().__init__()
        self.epochs, self.steps_per_epoch, self.batch, self.deadline, self.every = epochs, steps_per_epoch, batch, deadline, every
        self.started = time.monotonic()  # the first fit's start: a frozen phase and fine-tuning share one clock
        self.shown, self.steps, self.epoch, self.out_of_time = self.started, 0, 0, False

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch, self.since, self.epoch_steps = epoch, time.monotonic(), 0

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        now = time.monotonic()
        self.steps += 1
        self.epoch_steps = batch + 1
        if self.deadline is not None and now - self.started > self.deadline and not self.out_of_time:
            self.out_of_time = True
            self.model.stop_training = True
            print(
                f"out of time: training was given {self.deadline:.0f} s of the budget; it stops at step {batch + 1} of epoch "
                f"{self.epoch + 1} and keeps what it learned (the plan misjudged this machine's speed)",
                flush=True,
            )
        if now - self.shown >= self.every:
            self.shown = now
            rate = self.epoch_steps * self.batch / max(now - self.since, 1e-9)
            left = f", {self.deadline - (now - self.started):.0f} s of training time left" if self.deadline is not None else ""
            print(f"epoch {self.epoch + 1}/{self.epochs}: step {batch + 1}/{self.steps_per_epoch}, {rate:.0f} images/s{left}", flush=True)


class EpochLog(keras.callbacks.Callback):
    """Each epoch's logs as TensorBoard scalars (step = the epoch, 1-based), flushed before the epoch is
    committed; the hyperparameters once, at the first epoch of a training that did not resume."""

    def __init__(self, folder: Path, hyperparameters: Mapping[str, Any] | None) -> None:
        super().__init__()
        import tensorflow as tf

        self.writer = tf.summary.create_file_writer(str(folder))
        self.hyperparameters = hyperparameters

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        import tensorflow as tf

        with self.writer.as_default():
            if self.hyperparameters is not None:
                from tensorboard.plugins.hparams import api as hparams

                hparams.hparams({name: value for name, value in self.hyperparameters.items() if isinstance(value, (bool, int, float, str))})
                self.hyperparameters = None
            for name, value in (logs or {}).items():
                tf.summary.scalar(
                    name if name.startswith("val_") or name == "learning_rate" else f"train_{name}", float(value), step=epoch + 1
                )
        self.writer.flush()

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        self.writer.flush()
