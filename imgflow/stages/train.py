"""train: a Keras model fitted on the train split, read from the shards with tf.data.

Output folder::

    model.keras           the trained model; takes raw pixels (N, H, W, C) in 0..255, returns probabilities
                          (with ``[train] text``: {"pixels", "tokens"}, the tokens from vocabulary.txt)
    vocabulary.txt        with text: the train split's most frequent tokens, one a line (``imgflow.data.text``)
    history.json          per-epoch loss, accuracy, val_loss and val_accuracy
    training_curves.png   the same as plots
    tensorboard/          the same as TensorBoard scalars, and the config as its hyperparameters

How it trains (checkpoints and resume, class weights, transfer learning, the optimizer, early
stopping, seeds) is ``imgflow.training.loop``; with a time budget that names several candidates, their
race (``imgflow.training.race``), whose record is also written here as ``race.json``. The hardware plan
(``imgflow.training.accel``) picks the distribution strategy, precision and XLA; ``model.keras`` is always
float32, and the info records the plan under ``hardware``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imgflow.config import TrainConfig
from imgflow.results import StageResult, TrainInfo
from imgflow.runtime import stopping
from imgflow.store.stage import Stage


def _build(out_dir: Path, config: TrainConfig, inputs: Mapping[str, StageResult]) -> TrainInfo:
    import keras

    from imgflow.training.accel import current_plan, float32_copy, key_plan, make_strategy
    from imgflow.training.loop import fit_model, private_keras_seeds
    from imgflow.training.race import train_race

    # The strategy first: a multi-worker one must exist before any other TensorFlow op runs.
    chosen = current_plan(config.precision, config.jit_compile, config.augment_on)
    keyed = key_plan(config.precision, config.jit_compile, config.augment_on)
    if (keyed.precision, keyed.jit_compile, keyed.augment_on_device) != (chosen.precision, chosen.jit_compile, chosen.augment_on_device):
        print(
            f"note: TensorFlow sees other hardware than the key assumed ({chosen.precision} against {keyed.precision}): "
            "set [train] precision and jit_compile explicitly for exact reuse across machines",
            flush=True,
        )
    strategy = make_strategy(chosen)
    keras.mixed_precision.set_global_policy(chosen.precision)
    try:
        if config.race and chosen.workers > 1:
            print(f"note: the budget's race runs on one worker; {chosen.workers} workers train its first candidate alone", flush=True)
        if config.race and chosen.workers == 1:
            model, info = train_race(out_dir, config, inputs["shards"], chosen, strategy)
        else:
            with private_keras_seeds(config.seed):
                model, info = fit_model(out_dir, config, inputs["shards"], chosen, strategy)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    from imgflow.training.models import model_fingerprint

    # Saved in float32 whatever the training precision: validation and export need no special case.
    model = float32_copy(model) if chosen.precision != "float32" else model
    model.save(out_dir / "model.keras")
    stopping.training_finished()
    return info.model_copy(update={"content_fingerprint": model_fingerprint(model)})


def _identity(config: TrainConfig) -> dict[str, Any]:
    """What the key holds: the config with what it leaves to the machine resolved (``"auto"``
    precision, XLA and augmentation placement, as ``imgflow.training.accel.key_plan`` resolves them here,
    and whether a GPU trains), and the backbone weights' content (``weights_identity``), not their path."""
    from imgflow.training.accel import gpus_without_tensorflow, key_plan

    chosen = key_plan(config.precision, config.jit_compile, config.augment_on)
    resolved = config.replace(
        precision=chosen.precision, jit_compile=chosen.jit_compile, augment_on="device" if chosen.augment_on_device else "host"
    )
    if config.model == "transfer" and config.pretrained:
        from imgflow.training.weights import weights_identity

        resolved = resolved.replace(backbone_weights=weights_identity(config.backbone, config.backbone_weights))
    return {"config": resolved, "gpu": bool(gpus_without_tensorflow())}


TRAIN = Stage("train", "8", _build, identity=_identity, tensorflow=True)
