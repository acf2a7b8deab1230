"""The train stage's model choices and hardware plan, run for real on CPU on tiny shards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imgflow.config import ExportConfig, TrainConfig
from imgflow.stages.export import EXPORT
from imgflow.stages.train import TRAIN
from imgflow.store import ArtifactStore, StageResult

pytestmark = pytest.mark.slow  # trains (tiny) models: `make test-fast` trains nothing


def test_transfer_learning_freezes_then_fine_tunes_in_bfloat16_and_exports_float32(
    store: ArtifactStore, shards: StageResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras

    from imgflow import models

    phases = []

    def spy(model, learning_rate, total_steps, jit_compile=False):
        phases.append((learning_rate, total_steps, model.get_layer("backbone").trainable))
        return compile_for_training(model, learning_rate, total_steps, jit_compile)

    compile_for_training = models.compile_for_training
    monkeypatch.setattr(models, "compile_for_training", spy)

    config = TrainConfig(
        model="transfer", backbone="MobileNetV3Small", backbone_size=32, freeze_epochs=1, epochs=2, batch_size=64,
        precision="mixed_bfloat16", translate=0, rotate=0, zoom=0,
    )
    trained = TRAIN.run(store, config, {"shards": shards})
    assert trained.info.hardware.precision == "mixed_bfloat16" and trained.info.hardware.strategy == "default"
    history = json.loads(trained.file("history.json").read_text())
    assert len(history["loss"]) == 2
    # Epoch 1 trained the head on a frozen backbone at the full rate, epoch 2 everything at a tenth.
    assert phases == [(3e-3, 4, False), (pytest.approx(3e-4), 4, True)]
    model = keras.models.load_model(trained.file("model.keras"))
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}
    assert model.get_layer("backbone").trainable

    exported = EXPORT.run(store, ExportConfig(int8=False), {"shards": shards, "model": trained})
    assert exported.info.parity.max_abs_diff <= 1e-5


def test_resnet9_trains_and_the_plan_is_recorded(store: ArtifactStore, shards: StageResult) -> None:
    trained = TRAIN.run(store, TrainConfig(model="resnet9", width=8, epochs=1, translate=0, rotate=0, zoom=0), {"shards": shards})
    assert trained.info.hardware.model_dump() == {"strategy": "default", "precision": "float32", "jit_compile": False,
                                        "replicas": 1, "workers": 1, "augment_on_device": False}
    assert np.isfinite(trained.info.final["loss"])


def test_augmentation_in_the_train_step_trains_the_model_and_saves_it_without_augmentation(
    store: ArtifactStore, shards: StageResult
) -> None:
    import keras

    config = TrainConfig(width=4, epochs=1, augment_on="device", translate=0.1)
    trained = TRAIN.run(store, config, {"shards": shards})
    assert trained.info.hardware.augment_on_device is True
    model = keras.models.load_model(trained.file("model.keras"))
    assert model.name == "cnn" and not any("random" in layer.name for layer in model.layers)
    assert model.input_shape == (None, 8, 8, 1)
