"""The training toolbox: learning-rate schedules, weight decay and L2, label smoothing, early stopping.

Everything here is chosen by ``[train]`` fields (``Recipe.of``) and survives a checkpoint resume
exactly: schedules are functions of the optimizer's step count (saved with the model), and the two
decisions taken from the validation loss (``plateau`` lowering the learning rate, early stopping) are
replayed from the epoch history that the checkpoint keeps, rather than held in a callback's memory.

- ``cosine`` (default): a linear warm-up over the first tenth of the steps, then cosine decay.
- ``exponential``: the rate times ``decay_rate`` after every epoch.
- ``linear``: a linear warm-up over the first 5% of the steps, then a straight line down to zero at the
  last step: what a time budget trains with (``imgflow.training.recipe``).
- ``one_cycle``: up from a 25th of the rate to the rate over the first 30% of the steps, then cosine
  down to a 10,000th of it (Smith's one-cycle policy).
- ``plateau``: a constant rate, times ``plateau_factor`` whenever the validation loss has not improved
  for ``plateau_patience`` epochs (Keras' ReduceLROnPlateau rule).

Every epoch's learning rate is recorded in the history (``learning_rate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from imgflow.config.stages import SCHEDULE_NAMES

BEST_WEIGHTS = "best.weights.h5"


@dataclass(frozen=True)
class Recipe:
    """How to optimize, besides the learning rate and the step count (``compile_for_training``)."""

    schedule: str = "cosine"
    steps_per_epoch: int = 1
    decay_rate: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    metric: str = "accuracy"  # the figure training is judged by ([gate] metric): besides accuracy, logged as a metric

    @classmethod
    def of(cls, config: Any, steps_per_epoch: int) -> Recipe:
        """The recipe of a ``TrainConfig``."""
        return cls(config.schedule, steps_per_epoch, config.decay_rate, config.weight_decay, config.label_smoothing, config.select_by)


@keras.saving.register_keras_serializable(package="imgflow")
class ClassBalancedScore(keras.metrics.Metric):
    """Balanced accuracy or macro F1 (``imgflow.registry.gate.score``) as a Keras metric: a confusion matrix summed
    over the batches, so ``val_balanced_accuracy`` or ``val_macro_f1`` is in every epoch's logs, on the
    features of a frozen phase and on images alike."""

    def __init__(self, kind: str, classes: int, **kwargs: Any) -> None:
        super().__init__(name=kind, **kwargs)
        self.kind, self.classes = kind, classes
        self.confusion = self.add_variable(shape=(classes, classes), initializer="zeros", name="confusion")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        ops = keras.ops
        truth = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        guess = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        cells = ops.one_hot(truth * self.classes + guess, self.classes * self.classes)
        self.confusion.assign_add(ops.reshape(ops.sum(cells, axis=0), (self.classes, self.classes)))

    def result(self) -> Any:
        ops = keras.ops
        right = ops.diagonal(self.confusion)
        actual, predicted = ops.sum(self.confusion, axis=1), ops.sum(self.confusion, axis=0)
        present = ops.cast(actual > 0, "float32")
        recall = right / ops.maximum(actual, 1.0)
        if self.kind == "balanced_accuracy":
            return ops.sum(recall * present) / ops.maximum(ops.sum(present), 1.0)
        precision = right / ops.maximum(predicted, 1.0)
        f1 = 2 * precision * recall / ops.maximum(precision + recall, 1e-12)
        return ops.sum(f1 * present) / ops.maximum(ops.sum(present), 1.0)

    def reset_state(self) -> None:
        self.confusion.assign(keras.ops.zeros((self.classes, self.classes)))

    def get_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "classes": self.classes, "dtype": self.dtype}


def training_metrics(metric: str, classes: int) -> list[Any]:
    """What a compiled model reports besides its loss: accuracy, and the judged ``metric`` where it is another."""
    return ["accuracy"] if metric == "accuracy" else ["accuracy", ClassBalancedScore(metric, classes)]


@keras.saving.register_keras_serializable(package="imgflow")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Smith's one-cycle policy over ``total_steps``: warm up, then anneal (cosine)."""

    def __init__(self, max_rate: float, total_steps: int, warmup: float = 0.3) -> None:
        self.max_rate, self.total_steps, self.warmup = max_rate, total_steps, warmup

    def __call__(self, step: Any) -> Any:
        ops = keras.ops
        step = ops.cast(step, "float32")
        rise = max(1.0, self.warmup * self.total_steps)
        fall = max(1.0, self.total_steps - rise)
        start, end = self.max_rate / 25, self.max_rate / 1e4
        up = start + (self.max_rate - start) * step / rise
        down = end + (self.max_rate - end) * 0.5 * (1 + ops.cos(math.pi * ops.minimum(1.0, (step - rise) / fall)))
        return ops.where(step < rise, up, down)

    def get_config(self) -> dict[str, Any]:
        return {"max_rate": self.max_rate, "total_steps": self.total_steps, "warmup": self.warmup}


@keras.saving.register_keras_serializable(package="imgflow")
class LinearToZero(keras.optimizers.schedules.LearningRateSchedule):
    """Up from a tenth of ``rate`` over the first ``warmup`` of ``total_steps``, then down in a straight
    line to zero at the last step (Li et al. 2020, "Budgeted Training")."""

    def __init__(self, rate: float, total_steps: int, warmup: float = 0.05) -> None:
        self.rate, self.total_steps, self.warmup = rate, total_steps, warmup

    def __call__(self, step: Any) -> Any:
        ops = keras.ops
        step = ops.cast(step, "float32")
        rise = max(1.0, self.warmup * self.total_steps)
        up = self.rate * (0.1 + 0.9 * step / rise)
        down = self.rate * ops.maximum(0.0, (self.total_steps - step) / max(1.0, self.total_steps - rise))
        return ops.where(step < rise, up, ops.minimum(self.rate, down))

    def get_config(self) -> dict[str, Any]:
        return {"rate": self.rate, "total_steps": self.total_steps, "warmup": self.warmup}


def learning_rate(rate: float, total_steps: int, recipe: Recipe) -> Any:
    """The optimizer's learning rate: a schedule over the steps, or a constant (``plateau``)."""
    total_steps = max(1, total_steps)
    if recipe.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=rate / 10,
            decay_steps=max(1, total_steps - total_steps // 10),
            warmup_target=rate,
            warmup_steps=total_steps // 10,
        )
    if recipe.schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(rate, max(1, recipe.steps_per_epoch), recipe.decay_rate, staircase=True)
    if recipe.schedule == "linear":
        return LinearToZero(rate, total_steps)
    if recipe.schedule == "one_cycle":
        return OneCycle(rate, total_steps)
    if recipe.schedule == "plateau":
        return rate
    raise ValueError(f"unknown schedule {recipe.schedule!r}; known: {', '.join(SCHEDULE_NAMES)}")


def optimizer(rate: float, total_steps: int, recipe: Recipe) -> keras.optimizers.Optimizer:
    """Adam, or AdamW (decoupled weight decay) when ``weight_decay`` is set."""
    schedule = learning_rate(rate, total_steps, recipe)
    if recipe.weight_decay > 0:
        return keras.optimizers.AdamW(schedule, weight_decay=recipe.weight_decay)
    return keras.optimizers.Adam(schedule)


@keras.saving.register_keras_serializable(package="imgflow")
class SmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy against integer labels, smoothed: the true class gets ``1 - smoothing`` plus its
    share of ``smoothing``, spread evenly over every class (Keras' sparse loss has no smoothing)."""

    def __init__(self, smoothing: float = 0.0, name: str = "smoothed_crossentropy", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.smoothing = smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        ops = keras.ops
        labels = ops.one_hot(ops.cast(ops.reshape(y_true, [-1]), "int32"), ops.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(labels, y_pred, label_smoothing=self.smoothing)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "smoothing": self.smoothing}


def loss(recipe: Recipe) -> Any:
    return SmoothedCrossentropy(recipe.label_smoothing) if recipe.label_smoothing > 0 else "sparse_categorical_crossentropy"


def add_l2(model: keras.Model, strength: float) -> None:
    """An L2 penalty of ``strength`` on every kernel (convolutions and dense layers, nested models
    included), set in the layers' configs too so that a saved checkpoint keeps it."""
    if strength <= 0:
        return
    for layer in model._flatten_layers(include_self=False):
        if hasattr(layer, "kernel_regularizer") and getattr(layer, "kernel", None) is not None:
            layer.kernel_regularizer = keras.regularizers.L2(strength)
            layer.kernel.regularizer = layer.kernel_regularizer


def plateau_rates(val_losses: Sequence[float], rate: float, factor: float, patience: int) -> list[float]:
    """The learning rate after each epoch under the plateau rule, replayed from the validation losses:
    the rate drops by ``factor`` when ``patience`` epochs in a row brought no new best, then the count
    starts over (ReduceLROnPlateau with min_delta 0 and no cooldown)."""
    rates, best, wait = [], math.inf, 0
    for value in val_losses:
        if value < best:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                rate, wait = rate * factor, 0
        rates.append(rate)
    return rates


def best_epoch(values: Sequence[float], higher: bool = False, losses: Sequence[float] | None = None) -> int:
    """The (1-based) epoch of the lowest validation loss (``higher``: of the highest validation score,
    the lower of ``losses`` breaking ties: a small validation split's accuracy saturates while its loss
    still tells the epochs apart); the earliest among equals."""
    sign = -1 if higher else 1
    return min(range(len(values)), key=lambda i: (sign * values[i], losses[i] if losses else 0.0, i)) + 1


def stops_early(values: Sequence[float], patience: int, higher: bool = False, losses: Sequence[float] | None = None) -> bool:
    """Whether early stopping ends training now: ``patience`` epochs since the best one."""
    return patience > 0 and bool(values) and len(values) - best_epoch(values, higher, losses) >= patience


def monitored(config: Any) -> tuple[str, bool]:
    """What a run's early stopping and best epoch follow, and whether higher is better: a budgeted run's
    judged metric on the validation split (what the race and the gate compare; ties go to the lower
    validation loss), else the validation loss."""
    return (f"val_{config.select_by}", True) if config.budget is not None else ("val_loss", False)


def current_rate(model: keras.Model) -> float:
    """The learning rate the optimizer uses at its current step (a schedule's value there)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class RateLog(keras.callbacks.Callback):
    """Puts the epoch's learning rate into its logs (so into the history), before any other callback
    reads them. The rate recorded is the one the epoch ended with."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = current_rate(self.model)


class ValidationRules(keras.callbacks.Callback):
    """After each epoch, before the checkpoint callback commits it: the plateau rule and early
    stopping, decided from the history so far and this epoch's validation loss, so a resumed run
    decides as the killed one would have. The best epoch's weights are written to ``folder``
    (``BEST_WEIGHTS``) before the epoch is committed, for ``restore``."""

    def __init__(self, folder: Path, history: dict[str, list[float]], rate: float, config: Any) -> None:
        super().__init__()
        self.folder, self.history, self.rate, self.config = folder, history, rate, config
        self.whole: keras.Model | None = None  # whose weights to keep when the model being fit is its head

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        losses = [*self.history.get("val_loss", []), float((logs or {})["val_loss"])]
        if self.config.schedule == "plateau":
            new = plateau_rates(losses, self.rate, self.config.plateau_factor, self.config.plateau_patience)[-1]
            self.model.optimizer.learning_rate = new
        if self.keeps_best:
            name, higher = monitored(self.config)
            values = [*self.history.get(name, []), float((logs or {})[name])]
            ties = losses if higher else None
            if best_epoch(values, higher, ties) == len(values):
                tmp = self.folder / f".{BEST_WEIGHTS}"
                (self.whole if self.whole is not None else self.model).save_weights(tmp)
                tmp.replace(self.folder / BEST_WEIGHTS)
            if stops_early(values, self.config.early_stopping, higher, ties):
                self.model.stop_training = True

    @property
    def keeps_best(self) -> bool:
        """Early stopping keeps the best epoch's weights, and so does a budgeted run (by its judged metric)."""
        return bool(self.config.early_stopping) or self.config.budget is not None

    def restore(self, model: keras.Model) -> int | None:
        """Load the best epoch's weights into ``model``; return that epoch (None: the last is kept)."""
        name, higher = monitored(self.config)
        values = self.history.get(name, [])
        if not self.keeps_best or not values or not (self.folder / BEST_WEIGHTS).is_file():
            return None
        model.load_weights(self.folder / BEST_WEIGHTS)
        return best_epoch(values, higher, self.history.get("val_loss") if higher else None)
