"""train: a Keras model fitted on the train split, read from the shards with tf.data.

Output folder::

    model.keras           the trained model; takes raw pixels (N, H, W, C) in 0..255, returns probabilities
    history.json          per-epoch loss, accuracy, val_loss, val_accuracy and learning rate
    training_curves.png   the same as plots

Training checkpoints every epoch into the store's scratch folder for this key (see
``imgflow.checkpoints``): a run killed mid-training resumes from its last completed epoch when the same
key runs again, and ``resumed_from_epoch`` in the info says from which (0: from scratch).

With ``class_weights`` on, each class's examples are weighed by the inverse of its share of the train
split (see ``balanced_class_weights``), for imbalanced data.

The optimizer and its learning-rate schedule come from ``imgflow.models.compile_for_training``. Seeds
are fixed and, with ``deterministic`` (the default), TensorFlow's op determinism is on, so the same
inputs train the same model, bit for bit.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imgflow.config import TrainConfig
from imgflow.stages.shard import split_files
from imgflow.store import CONTENT_FINGERPRINT, Stage, StageResult, scratch_dir

_EVAL_BATCH = 256


def _build(out_dir: Path, config: TrainConfig, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    import keras

    from imgflow.checkpoints import EpochCheckpoint, load_progress
    from imgflow.data import make_augmenter, shard_dataset
    from imgflow.models import build_model, compile_for_training, model_fingerprint
    from imgflow.reports import plot_training_curves

    shards = inputs["shards"]
    shape = tuple(shards.info["image_shape"])
    num_classes = len(shards.info["class_names"])
    n_train = shards.info["splits"]["train"]["records"]
    if n_train == 0:
        raise ValueError(f"the train split in {shards.path} is empty: nothing to train on")
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()

    augmenter = make_augmenter(config.translate, config.rotate, config.zoom, config.seed)
    train_data = shard_dataset(
        split_files(shards, "train"), shape, config.batch_size, training=True, seed=config.seed, augmenter=augmenter
    )
    val_data, val_steps = None, None
    n_val = shards.info["splits"]["val"]["records"]
    if n_val:
        val_data = shard_dataset(split_files(shards, "val"), shape, _EVAL_BATCH, training=False)
        # Known step counts: a dataset of unknown length makes Keras warn that input "ran out".
        val_steps = math.ceil(n_val / _EVAL_BATCH)

    steps_per_epoch = math.ceil(n_train / config.batch_size)
    checkpoints = scratch_dir(out_dir)
    progress = load_progress(checkpoints)
    if progress is None:
        model = build_model(config.model, shape, num_classes, config.width, config.dropout)
        compile_for_training(model, config, steps_per_epoch)
        resumed_from, history = 0, {}
    else:
        # A killed run of this same key left a checkpoint: the model and optimizer state at the end of
        # its last completed epoch, and the history up to it.
        model = keras.models.load_model(checkpoints / progress["checkpoint"])
        resumed_from, history = progress["epoch"], progress["history"]
        print(f"resuming training from the checkpoint of epoch {resumed_from} in {checkpoints}", flush=True)
    model.fit(
        train_data,
        class_weight=balanced_class_weights(shards.info["splits"]["train"]["class_counts"]) if config.class_weights else None,
        epochs=config.epochs,
        initial_epoch=resumed_from,
        steps_per_epoch=steps_per_epoch,
        validation_data=val_data,
        validation_steps=val_steps,
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=1 if sys.stdout.isatty() else 2,
        callbacks=[EpochCheckpoint(checkpoints, history)],
    )
    model.save(out_dir / "model.keras")
    (out_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    plot_training_curves(history, out_dir / "training_curves.png")
    last = {name: values[-1] for name, values in history.items()}
    return {
        CONTENT_FINGERPRINT: model_fingerprint(model),
        "epochs": config.epochs,
        "resumed_from_epoch": resumed_from,
        "train_records": n_train,
        "parameters": int(model.count_params()),
        "final": last,
    }


def balanced_class_weights(counts: list[int]) -> dict[int, float]:
    """Inverse-frequency weights (``n / (k * n_c)``), so each present class weighs the same in the loss."""
    present = {index: count for index, count in enumerate(counts) if count}
    total = sum(present.values())
    return {index: total / (len(present) * count) for index, count in present.items()}


TRAIN = Stage("train", "3", _build)
