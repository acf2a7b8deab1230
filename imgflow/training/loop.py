"""The training loop: a Keras model fitted on a shard stage's train split with tf.data
(``fit_model``), and a budget's race of candidates (``train_race``: ``imgflow.training.race`` decides,
each rung a ``fit_model`` of its own). The train stage (``imgflow.stages.train``) wires them to its
output folder and key.

Training checkpoints every epoch into the store's scratch folder for this key (see
``imgflow.training.checkpoints``; on an object-store root, into the bucket too): a run killed mid-training
resumes from its last completed epoch when the same key runs again, on this machine or another, and
``resumed_from_epoch`` in the info says from which (0: from scratch). A killed race resumes at the rung it
was in: each finished rung is recorded in the build's scratch.

With ``class_weights`` on, each class's examples are weighed by the inverse of its share of the train
split (see ``balanced_class_weights``), for imbalanced data.

A ``transfer`` model trains its new head on a frozen backbone for ``freeze_epochs``, then fine-tunes
everything at ``learning_rate * fine_tune_factor``.

The optimizer, its learning-rate schedule, weight decay, L2 and label smoothing come from
``imgflow.training.optim`` (``[train] schedule`` and the fields after it); every epoch's learning rate is in the
history. With ``early_stopping = N`` training ends once N epochs in a row brought no better validation
loss (a budgeted run: no better ``[gate] metric`` on the validation split), and the model keeps the best
epoch's weights (``best_epoch`` in the info; ``epochs`` is how many ran); a budgeted run keeps its best
epoch always. Both that and the ``plateau`` schedule are replayed from the checkpointed history on a
resume. Seeds are fixed and, with ``deterministic`` (the default), TensorFlow's op determinism is on, so
the same inputs train the same model, bit for bit, whatever else the process is doing
(``private_keras_seeds``).
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imgflow.config import TrainConfig
from imgflow.results import Hardware, ShardInfo, StageResult, TrainInfo, shard_files
from imgflow.runtime import cpus
from imgflow.runtime.errors import ConfigError
from imgflow.store.scratch import remote_scratch, scratch_dir


@contextmanager
def private_keras_seeds(seed: int) -> Iterator[None]:
    """Keras draws the seed of every unseeded initializer and random layer from Python's global
    ``random`` (``keras.src.random.seed_generator.make_default_seed``), which other threads draw from
    too: Prefect's events client pings its websocket with ``random.getrandbits`` from its event-loop
    thread, and a ping between ``keras.utils.set_random_seed`` and the model's construction gave the
    same inputs a different model (a flaky crash-safety test, found by logging every non-main thread's
    draw). Within this block Keras draws from a ``random.Random(seed)`` of its own."""
    from keras.src.random import seed_generator

    if not callable(getattr(getattr(seed_generator, "python_random", None), "randint", None)):
        raise RuntimeError(  # noqa: TRY004 - not a caller's wrong type: the installed Keras changed
            f"this Keras ({seed_generator.__file__}) no longer draws default seeds from python_random: "
            "imgflow's training would not be reproducible; update _private_keras_seeds"
        )
    shared = seed_generator.python_random
    seed_generator.python_random = random.Random(seed)
    try:
        yield
    finally:
        seed_generator.python_random = shared


def fit_model(
    out_dir: Path,
    config: TrainConfig,
    shards: StageResult,
    chosen: Any,
    strategy: Any,
    checkpoints: Path | None = None,
    start: Path | None = None,
    stage_root: Path | None = None,
) -> tuple[Any, TrainInfo]:
    """Train ``config`` on ``shards``, checkpointing into ``checkpoints`` (by default this build's
    scratch), from ``start``'s weights when given (a race's continuing rung) instead of new ones.
    ``stage_root`` is the train stage's folder (by default ``out_dir``'s), where frozen features are
    shared by every build (``imgflow.training.frozen.cache_dir``)."""
    import keras
    import tensorflow as tf

    from imgflow.reporting.reports import plot_training_curves
    from imgflow.training.accel import fit_multi_worker, unwrap, with_augmentation
    from imgflow.training.checkpoints import (
        CheckpointMirror,
        EpochCheckpoint,
        EpochLog,
        EpochProgress,
        StepProgress,
        StopOnRequest,
        load_progress,
    )
    from imgflow.training.frozen import fit_head
    from imgflow.training.inputs import eval_batch, make_augmenter, shard_dataset, with_tokens
    from imgflow.training.models import build_model, compile_for_training, load_model, set_backbone_trainable
    from imgflow.training.optim import RateLog, Recipe, ValidationRules, add_l2, monitored, plateau_rates, stops_early
    from imgflow.training.tensorboard_logs import publish as publish_events

    shard_info = shards.info
    assert isinstance(shard_info, ShardInfo), shards.stage
    shape = tuple(shard_info.image_shape)
    num_classes = len(shard_info.class_names)
    n_train = shard_info.splits["train"].records
    if n_train == 0:
        raise ValueError(f"the train split in {shards.path} is empty: nothing to train on")
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    encoder = _text_encoder(config, shards, out_dir) if config.text else None
    augmenter = make_augmenter(config.translate, config.rotate, config.zoom, config.seed, config.flip)
    on_device = chosen.augment_on_device and augmenter is not None
    train_data = shard_dataset(
        shard_files(shards, "train"),
        shape,
        config.batch_size,
        training=True,
        seed=config.seed,
        augmenter=None if on_device else augmenter,
        deterministic=config.deterministic,
        text=config.text,
    )
    if encoder is not None:
        train_data = with_tokens(train_data, encoder, config.modality_dropout, config.seed)
    val_data, val_steps = None, None
    n_val = shard_info.splits["val"].records
    if n_val:
        batch = eval_batch(shape, largest=256)
        val_data = shard_dataset(shard_files(shards, "val"), shape, batch, training=False, text=config.text)
        if encoder is not None:
            val_data = with_tokens(val_data, encoder)
        # Known step counts: a dataset of unknown length makes Keras warn that input "ran out".
        val_steps = math.ceil(n_val / batch)
    if chosen.workers > 1:
        # Every worker reads every shard and takes its share of each batch (few, small shards).
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_data = train_data.with_options(options)
        val_data = val_data.with_options(options) if val_data is not None else None

    steps_per_epoch = config.steps_per_epoch or math.ceil(n_train / config.batch_size)
    recipe = Recipe.of(config, steps_per_epoch)
    for line in config.plan:  # a budgeted run's plan, in the log before training starts
        print(line, flush=True)
    by_validation = config.early_stopping > 0 or config.schedule == "plateau"
    if by_validation and not n_val:
        raise ConfigError(
            f'[train] early_stopping and schedule = "plateau" follow the validation loss, but the validation split in '
            f"{shards.path} is empty: raise [clean] val_fraction"
        )
    if by_validation and chosen.workers > 1:
        raise ConfigError('[train] early_stopping and schedule = "plateau" are not supported across several workers yet')
    cpu = cpus.budget()
    print(
        f"training plan: {chosen.precision}, {chosen.strategy} strategy{', XLA' if chosen.jit_compile else ''}, "
        f"{cpu.threads} CPU thread{'s' * (cpu.threads > 1)} ({cpu.source}), {steps_per_epoch} steps of "
        f"{config.batch_size} an epoch",
        flush=True,
    )
    mirror = None
    if checkpoints is None:
        checkpoints = scratch_dir(out_dir)
        mirror = CheckpointMirror(uri) if (uri := remote_scratch()) else None  # an object-store root's copy
    else:  # a race's rung: on this machine only
        checkpoints.mkdir(parents=True, exist_ok=True)
    if mirror is not None:
        mirror.pull(checkpoints)  # a build taken over from another machine resumes from its checkpoints
    progress = load_progress(checkpoints)
    # Transfer learning trains in two phases: the head on a frozen backbone, then everything at a lower
    # learning rate. Other models have one phase.
    frozen = min(config.freeze_epochs or 0, config.epochs) if config.model == "transfer" else 0
    with strategy.scope():
        if progress is None:
            model = (
                build_model(shape, num_classes, config, encoder.size if encoder is not None else 0) if start is None else load_model(start)
            )
            if on_device:
                model = with_augmentation(model, augmenter)
            set_backbone_trainable(unwrap(model), frozen == 0, pretrained=config.pretrained)
            add_l2(unwrap(model), config.l2)
            compile_for_training(model, config.learning_rate, steps_per_epoch * (frozen or config.epochs), chosen.jit_compile, recipe)
            resumed_from, history = 0, {}
        else:
            # A killed run of this same key left a checkpoint: the model and optimizer state at the end
            # of its last completed epoch, and the history up to it.
            model = load_model(checkpoints / progress["checkpoint"])
            resumed_from, history = progress["epoch"], progress["history"]
            if config.schedule == "plateau":  # the rate the plateau rule had reached, replayed from the history
                model.optimizer.learning_rate = plateau_rates(
                    history["val_loss"], config.learning_rate, config.plateau_factor, config.plateau_patience
                )[-1]
            print(f"resuming training from the checkpoint of epoch {resumed_from} in {checkpoints}", flush=True)
    class_weight = balanced_class_weights(shard_info.splits["train"].class_counts) if config.class_weights else None
    rules = ValidationRules(checkpoints, history, config.learning_rate, config)
    committer = EpochCheckpoint(checkpoints, history, mirror)
    # In this order: the epoch's rate is logged, the validation rules decide (and keep the best weights),
    # then the epoch is committed.
    # TensorBoard's events go beside the checkpoints (kept through a resume), into the output at the end.
    board = EpochLog(checkpoints, config.model_dump() if progress is None else None)
    steps = StepProgress(config.epochs, steps_per_epoch, config.batch_size, config.deadline)
    # A budgeted run keeps its best epoch by its judged metric (where it has a validation split).
    keeps_best = by_validation or (config.budget is not None and bool(n_val) and chosen.workers == 1)
    callbacks = [RateLog(), steps, *([rules] if keeps_best else []), board, committer, EpochProgress(config.epochs), StopOnRequest()]
    watched, higher = monitored(config)

    def stopped_early() -> bool:
        return stops_early(history.get(watched, []), config.early_stopping, higher, history.get("val_loss") if higher else None)

    def done() -> bool:
        return steps.out_of_time or stopped_early()

    def fit(epochs: int, initial_epoch: int, net: Any = None, data: Any = None, validation: Any = None) -> None:
        # the model and its data, or (the frozen phase on features) the head and its features
        net, data, validation = (model, train_data, val_data) if net is None else (net, data, validation)
        if chosen.workers > 1:
            fit_multi_worker(
                net,
                strategy,
                data,
                epochs=epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch,
                global_batch=config.batch_size,
                validation_data=validation,
                validation_steps=val_steps,
                callbacks=callbacks,
                class_weight=class_weight,
            )
            return
        net.fit(
            data,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation,
            validation_steps=val_steps,
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=1 if sys.stdout.isatty() else 2,
            callbacks=callbacks,
            class_weight=class_weight,
        )

    # A frozen backbone computes the same features every epoch: computed once instead (imgflow.training.frozen),
    # where nothing else rides on the model (one worker, augmentation in tf.data).
    on_features = frozen > 0 and chosen.workers == 1 and not on_device
    if resumed_from < frozen and not done() and on_features:
        fit_head(
            fit,
            unwrap(model),
            shards,
            shape,
            config,
            chosen,
            recipe,
            steps_per_epoch,
            checkpoints,
            stage_root or out_dir.parent,
            resumed_from,
            frozen,
            [committer, rules],
            encoder,
        )
    elif resumed_from < frozen and not done():
        fit(frozen, resumed_from)
    # Fine-tuning starts after the frozen phase, and after a resume from its last checkpoint (a resume
    # from a later epoch restores the fine-tuning state itself).
    if frozen and resumed_from <= frozen < config.epochs and not done():
        with strategy.scope():
            set_backbone_trainable(unwrap(model), True, pretrained=config.pretrained)
            compile_for_training(
                model,
                config.learning_rate * config.fine_tune_factor,
                steps_per_epoch * (config.epochs - frozen),
                chosen.jit_compile,
                recipe,
            )
    if not done():
        fit(config.epochs, len(history.get("loss", [])))  # from the last epoch done: a resume, or the frozen phase
    best = rules.restore(unwrap(model)) if keeps_best else None
    board.writer.close()
    publish_events(checkpoints, out_dir)
    (out_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    plot_training_curves(history, out_dir / "training_curves.png")
    info = TrainInfo(
        epochs=len(history.get("loss", [])),
        resumed_from_epoch=resumed_from,
        train_records=n_train,
        parameters=int(model.count_params()),
        final={name: float(values[-1]) for name, values in history.items()},
        hardware=Hardware(
            strategy=chosen.strategy,
            precision=chosen.precision,
            jit_compile=chosen.jit_compile,
            replicas=int(strategy.num_replicas_in_sync),
            workers=chosen.workers,
            augment_on_device=on_device,
            cpus=round(cpu.cores, 3),
            cpu_threads=cpu.threads,
        ),
        vocabulary=len(encoder.words) if encoder is not None else None,
        best_epoch=best,
        plan=list(config.plan) or None,
        deadline=config.deadline,
        out_of_time=steps.out_of_time,
        steps=steps.steps if config.deadline is not None else None,
        stopped=(
            "out of time" if steps.out_of_time else "validation stopped improving" if stopped_early() else "its planned steps were done"
        ),
    )
    return unwrap(model), info


def _text_encoder(config: TrainConfig, shards: StageResult, out_dir: Path) -> Any:
    """The text encoder of a text model: a vocabulary learned from the train split's text alone
    (written to vocabulary.txt), so validation and test text never shape the model."""
    from imgflow.data.text import VOCABULARY_FILE, TextEncoder, count_tokens, vocabulary, write_vocabulary
    from imgflow.training.inputs import iter_texts

    assert isinstance(shards.info, ShardInfo), shards.stage
    if not shards.info.text:
        raise ConfigError(
            "[train] text = true, but the data carries no text: name it in the dataset spec's [options] "
            "(text_column for Parquet, text_sidecar for folders and archives, text_feature for TFDS)"
        )
    words = vocabulary(count_tokens(iter_texts(shard_files(shards, "train"))), config.text_vocabulary)
    if not words:
        raise ConfigError(
            f"the train split's text in {shards.path} has no token seen twice: there is no vocabulary to learn "
            "(is the text empty, or unique to every record?); set [train] text = false"
        )
    write_vocabulary(words, out_dir / VOCABULARY_FILE)
    return TextEncoder(words, config.text_length)


def balanced_class_weights(counts: list[int]) -> dict[int, float]:
    """Inverse-frequency weights (``n / (k * n_c)``), so each present class weighs the same in the loss."""
    present = {index: count for index, count in enumerate(counts) if count}
    total = sum(present.values())
    return {index: total / (len(present) * count) for index, count in present.items()}
