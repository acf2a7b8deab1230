"""The train stage's model choices and hardware plan, run for real on CPU on tiny shards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from imgflow.runtime import cpus
from imgflow.training.accel import bf16_kernels, cpu_flags
from imgflow.config import ExportConfig, TrainConfig
from imgflow.stages.export import EXPORT
from imgflow.stages.train import TRAIN
from imgflow.store.artifacts import ArtifactStore, StageResult

pytestmark = pytest.mark.slow  # trains (tiny) models: `make test-fast` trains nothing


def test_transfer_learning_freezes_then_fine_tunes_in_bfloat16_and_exports_float32(
    store: ArtifactStore, shards: StageResult, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import keras

    from imgflow.training import models

    phases = []

    def spy(model, learning_rate, total_steps, jit_compile=False, recipe=None):
        layers = {layer.name for layer in model.layers}
        phases.append((model.name, learning_rate, total_steps, model.get_layer("backbone").trainable if "backbone" in layers else None))
        return compile_for_training(model, learning_rate, total_steps, jit_compile, recipe)

    compile_for_training = models.compile_for_training
    monkeypatch.setattr(models, "compile_for_training", spy)

    # VGG16: 13 convolutions trace in a third of MobileNetV3Small's time (11 s against 28 s for these two
    # epochs), and its Caffe-style preprocessing goes through both exports.
    config = TrainConfig(
        model="transfer", backbone="VGG16", backbone_weights="random", backbone_size=32, freeze_epochs=1, epochs=2, batch_size=64,
        precision="mixed_bfloat16", translate=0, rotate=0, zoom=0,
    )
    trained = TRAIN.run(store, config, {"shards": shards})
    assert trained.info.hardware.precision == "mixed_bfloat16" and trained.info.hardware.strategy == "default"
    history = json.loads(trained.file("history.json").read_text())
    assert len(history["loss"]) == 2
    # Epoch 1 trained the head, on the frozen backbone's features computed once, at the full rate;
    # epoch 2 everything, on images, at a tenth.
    assert phases == [
        ("transfer_vgg16", 3e-3, 4, False), ("head", 3e-3, 4, None), ("transfer_vgg16", pytest.approx(3e-4), 4, True)
    ]
    assert "computing the frozen backbone's features of the" in capsys.readouterr().out
    model = keras.models.load_model(trained.file("model.keras"))
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}
    assert model.get_layer("backbone").trainable

    exported = EXPORT.run(store, ExportConfig(int8=False), {"shards": shards, "model": trained})
    assert exported.info.parity.max_abs_diff <= 1e-5


def test_resnet9_trains_and_the_plan_is_recorded(store: ArtifactStore, shards: StageResult) -> None:
    trained = TRAIN.run(store, TrainConfig(model="resnet9", width=8, epochs=1, translate=0, rotate=0, zoom=0), {"shards": shards})
    precision = "mixed_bfloat16" if bf16_kernels(cpu_flags(), os.environ) else "float32"  # this machine's CPU decides
    cpu = cpus.budget()
    assert trained.info.hardware.model_dump() == {"strategy": "default", "precision": precision, "jit_compile": False,
                                        "replicas": 1, "workers": 1, "augment_on_device": False,
                                        "cpus": round(cpu.cores, 3), "cpu_threads": cpu.threads}
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


STILL = {"translate": 0.0, "rotate": 0.0, "zoom": 0.0, "width": 4, "batch_size": 64}


def _history(trained: StageResult) -> dict[str, list[float]]:
    return json.loads(trained.file("history.json").read_text())


@pytest.mark.parametrize("schedule", ["cosine", "exponential", "one_cycle"])
def test_each_schedule_sets_every_epochs_learning_rate(store: ArtifactStore, shards: StageResult, schedule: str) -> None:
    import math

    from imgflow.training.optim import Recipe, learning_rate

    config = TrainConfig(epochs=3, learning_rate=0.01, schedule=schedule, decay_rate=0.5, **STILL)
    trained = TRAIN.run(store, config, {"shards": shards})
    steps = math.ceil(trained.info.train_records / 64)
    rate = learning_rate(0.01, 3 * steps, Recipe.of(config, steps))
    assert _history(trained)["learning_rate"] == pytest.approx([float(rate(steps * epoch)) for epoch in (1, 2, 3)])
    if schedule == "exponential":
        assert _history(trained)["learning_rate"] == pytest.approx([0.005, 0.0025, 0.00125])


def test_plateau_lowers_the_rate_when_the_validation_loss_stalls(store: ArtifactStore, shards: StageResult) -> None:
    from imgflow.training.optim import plateau_rates

    config = TrainConfig(epochs=8, learning_rate=0.05, schedule="plateau", plateau_patience=1, plateau_factor=0.5, **STILL)
    history = _history(TRAIN.run(store, config, {"shards": shards}))
    # The rate of each epoch is the one the rule had reached after the epoch before.
    assert history["learning_rate"] == pytest.approx([0.05, *plateau_rates(history["val_loss"], 0.05, 0.5, 1)[:-1]])
    assert min(history["learning_rate"]) < 0.05  # it did stall, and the rate went down


def test_early_stopping_ends_training_and_keeps_the_best_epochs_weights(store: ArtifactStore, shards: StageResult) -> None:
    from imgflow.training.inputs import shard_dataset
    from imgflow.training.models import load_model
    from imgflow.results import shard_files

    # float32 whatever the CPU: the saved (float32) model's loss is compared with the one training saw.
    config = TrainConfig(epochs=60, learning_rate=0.02, schedule="plateau", plateau_patience=10, early_stopping=2, precision="float32", **STILL)
    trained = TRAIN.run(store, config, {"shards": shards})
    history = _history(trained)
    ran, best = trained.info.epochs, trained.info.best_epoch
    assert ran < 60 and len(history["val_loss"]) == ran and best == ran - 2
    assert history["val_loss"][best - 1] == min(history["val_loss"])
    model = load_model(trained.file("model.keras"))
    loss = model.evaluate(shard_dataset(shard_files(shards, "val"), (8, 8, 1), 256, training=False), verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(history["val_loss"][best - 1], rel=1e-4)


def test_weight_decay_l2_and_label_smoothing_change_the_model(store: ArtifactStore, shards: StageResult) -> None:
    from imgflow.training.models import load_model

    def kernel_norm(trained: StageResult) -> float:
        model = load_model(trained.file("model.keras"))
        return float(sum(np.square(w.numpy()).sum() for w in model.weights if "kernel" in w.path))

    base = TRAIN.run(store, TrainConfig(epochs=2, **STILL), {"shards": shards})
    decayed = TRAIN.run(store, TrainConfig(epochs=2, weight_decay=2.0, **STILL), {"shards": shards})
    penalized = TRAIN.run(store, TrainConfig(epochs=2, l2=0.05, **STILL), {"shards": shards})
    smoothed = TRAIN.run(store, TrainConfig(epochs=2, label_smoothing=0.2, **STILL), {"shards": shards})
    assert kernel_norm(decayed) < 0.97 * kernel_norm(base) and kernel_norm(penalized) < 0.97 * kernel_norm(base)
    assert type(load_model(decayed.file("model.keras")).optimizer).__name__ == "AdamW"
    config = load_model(penalized.file("model.keras")).get_layer("probabilities").get_config()
    assert config["kernel_regularizer"]["config"]["l2"] == pytest.approx(0.05)
    assert load_model(smoothed.file("model.keras")).loss.smoothing == 0.2
    assert _history(smoothed)["loss"] != _history(base)["loss"]


def test_the_same_inputs_train_the_same_model_while_another_thread_draws_from_pythons_random(
    store: ArtifactStore, shards: StageResult, tmp_path
) -> None:
    """Keras seeds its unseeded layers from Python's global ``random``; Prefect's events client draws
    from it on its own thread (a websocket ping). A thread drawing all along must not change the model."""
    import random
    import threading

    config = TrainConfig(width=4, epochs=1, translate=0, rotate=0, zoom=0, dropout=0.3)
    alone = TRAIN.run(store, config, {"shards": shards})
    stop = threading.Event()

    def draw() -> None:
        while not stop.wait(0.0005):  # a draw every half millisecond: model building takes thousands of them
            random.getrandbits(32)

    drawing = threading.Thread(target=draw, daemon=True)
    drawing.start()
    try:
        again = TRAIN.run(ArtifactStore(tmp_path / "other"), config, {"shards": shards})
    finally:
        stop.set()
        drawing.join()
    # The weights, bit for bit (the fingerprint also hashes the layers' names, which Keras numbers per
    # process: conv2d, then conv2d_5 for the same layer of a second model).
    import keras

    first, second = (keras.models.load_model(result.file("model.keras")) for result in (alone, again))
    assert all(np.array_equal(a, b) for a, b in zip(first.get_weights(), second.get_weights(), strict=True))


def test_a_frozen_lite0_trains_its_head_on_features_computed_once_per_shards_and_backbone(
    store: ArtifactStore, shards: StageResult, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    """EfficientNet-Lite0 with its ImageNet weights, frozen throughout: its features are computed once
    and reused by a build with other training settings (a tuning trial), and the saved model, run on
    images, gives what the head learned on features."""
    import keras

    from imgflow.training.inputs import shard_dataset
    from imgflow.results import shard_files

    monkeypatch.setenv("IMGFLOW_WEIGHTS", str(tmp_path / "weights"))
    config = TrainConfig(
        model="transfer", backbone="EfficientNetLite0", backbone_weights="imagenet", backbone_size=32, freeze_epochs=2, epochs=2,
        precision="float32", **{name: value for name, value in STILL.items() if name != "width"},
    )
    first = TRAIN.run(store, config, {"shards": shards})
    assert "computing the frozen backbone's features of the" in capsys.readouterr().out
    second = TRAIN.run(store, config.replace(learning_rate=1e-3), {"shards": shards})
    out = capsys.readouterr().out
    assert "reusing the frozen backbone's features" in out and "computing" not in out
    assert len(_history(first)["loss"]) == 2 and _history(first)["loss"] != _history(second)["loss"]
    # A damaged features file is named and computed again, never trained on.
    cached = next(Path(first.path).parent.glob(".features/*/train.features.npy"))
    data = bytearray(cached.read_bytes())
    data[-3] ^= 0xFF
    cached.write_bytes(bytes(data))
    from imgflow.pipeline.housekeeping import verify  # imgflow verify sees it, naming the file

    checked, damaged = verify(store)
    assert [d.what.split()[:2] for d in damaged] == [["train", "features"]] and "train.features.npy: sha256" in damaged[0].problems[0]
    assert checked >= 4  # the outputs, and the train and validation features
    TRAIN.run(store, config.replace(learning_rate=2e-3), {"shards": shards})
    out = capsys.readouterr().out
    assert f"the cached features in {cached.parent} are not as written (train.features.npy: sha256" in out
    assert "computing the frozen backbone's features of the" in out
    assert verify(store)[1] == []  # computed again, sealed again

    # A race's frozen candidate uses the same features, from the stage's folder, not its build's scratch
    # (which the store removes once the race's output is published).
    from imgflow.training.race import Candidate

    frozen = Candidate("lite0-frozen", {"freeze_epochs": 2, "epochs": 2}, 0.1).as_dict()
    scratch = Candidate("cnn-w4", {**STILL, "model": "cnn", "flip": "none", "freeze_epochs": 0}, 0.5).as_dict()
    TRAIN.run(store, config.replace(budget="60s", deadline=3.0, race=(frozen, scratch)), {"shards": shards})
    out = capsys.readouterr().out
    assert f"reusing the frozen backbone's features of the {shards.info.splits['train'].records} train records from {cached.parent}" in out
    assert "computing the frozen backbone's features" not in out

    model = keras.models.load_model(first.file("model.keras"))
    assert not model.get_layer("backbone").trainable
    val = shard_dataset(shard_files(shards, "val"), (8, 8, 1), 256, training=False)
    loss = model.evaluate(val, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(_history(first)["val_loss"][-1], rel=1e-3)


def test_a_frozen_lite0_with_text_trains_its_head_and_text_tower_on_features_and_token_ids(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    """With a text tower too, the frozen phase runs on the cached features and the records' token ids,
    which must line up record for record: the saved model, run on images and their text, gives the
    validation loss the head reached on features and tokens."""
    import keras

    from imgflow.config import CleanConfig, DownloadConfig, ShardConfig
    from imgflow.training.inputs import shard_dataset, with_tokens
    from imgflow.results import shard_files
    from imgflow.data.sources import source_fingerprint
    from imgflow.stages.clean import CLEAN
    from imgflow.stages.download import DOWNLOAD
    from imgflow.stages.shard import SHARD
    from imgflow.data.synthetic import captioned_folder
    from imgflow.data.text import TextEncoder, read_vocabulary

    monkeypatch.setenv("IMGFLOW_WEIGHTS", str(tmp_path / "weights"))
    captioned_folder(tmp_path / "data", per_class=40, side=8)
    download = DownloadConfig(source=f"folder:{tmp_path / 'data'}", options={"text_sidecar": ".txt"})
    raw = DOWNLOAD.run(store, download, {"source": source_fingerprint(download.source, download.options)})
    shards = SHARD.run(store, ShardConfig(), {"clean": CLEAN.run(store, CleanConfig(), {"raw": raw})})
    config = TrainConfig(
        model="transfer", backbone="EfficientNetLite0", backbone_weights="imagenet", backbone_size=32, freeze_epochs=3, epochs=3,
        precision="float32", text=True, modality_dropout=0.3, **{name: value for name, value in STILL.items() if name != "width"},
    )
    trained = TRAIN.run(store, config, {"shards": shards})
    assert "computing the frozen backbone's features of the" in capsys.readouterr().out

    model = keras.models.load_model(trained.file("model.keras"))
    assert not model.get_layer("backbone").trainable and set(model.input) == {"pixels", "tokens"}
    encoder = TextEncoder(read_vocabulary(trained.file("vocabulary.txt")), config.text_length)
    val = with_tokens(shard_dataset(shard_files(shards, "val"), (8, 8, 1), 256, training=False, text=True), encoder)
    loss = model.evaluate(val, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(_history(trained)["val_loss"][-1], rel=1e-3)
    assert _history(trained)["loss"][-1] < _history(trained)["loss"][0]


def test_tensorboard_holds_every_epochs_scalars_and_the_config(store: ArtifactStore, shards: StageResult) -> None:
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    trained = TRAIN.run(store, TrainConfig(epochs=3, **STILL), {"shards": shards})
    board = event_accumulator.EventAccumulator(str(trained.file("tensorboard")), size_guidance={"tensors": 0})
    board.Reload()
    history = _history(trained)
    for tag, key in (("val_loss", "val_loss"), ("train_accuracy", "accuracy"), ("learning_rate", "learning_rate")):
        events = board.Tensors(tag)
        assert [event.step for event in events] == [1, 2, 3], tag
        assert [float(tf.make_ndarray(event.tensor_proto)) for event in events] == pytest.approx(history[key], rel=1e-5), tag
    assert "_hparams_/session_start_info" in board.Tags()["tensors"]  # the config, for TensorBoard's hparams view


def test_a_killed_race_resumes_at_the_rung_it_was_in_and_keeps_the_best_epoch_by_the_gates_metric(
    store: ArtifactStore, shards: StageResult, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two real candidates race on tiny shards, judged by macro F1; the run is killed as the winner's
    last rung starts. The rerun of the same key reuses both finished first rungs (no candidate trains
    them again), trains the winner on, and records the race: every candidate's figure, the winner, why."""
    from imgflow.training import loop, race

    candidates = tuple(
        race.Candidate(f"cnn-w{width}", {**STILL, "model": "cnn", "flip": "none", "width": width}, 0.5).as_dict()
        for width in (4, 8)
    )
    config = TrainConfig(budget="60s", deadline=12.0, race=candidates, select_by="macro_f1", **{**STILL, "width": 4})
    real = loop.fit_model

    def killed_at_the_last_rung(out_dir, rung_config, *args, **kwargs):
        if rung_config.early_stopping:  # only the winner's last rung stops early
            raise KeyboardInterrupt("killed")
        return real(out_dir, rung_config, *args, **kwargs)

    monkeypatch.setattr(loop, "fit_model", killed_at_the_last_rung)
    with pytest.raises(KeyboardInterrupt):
        TRAIN.run(store, config, {"shards": shards})
    first = capsys.readouterr().out
    assert first.count("race: rung 1, cnn-w4: val_macro_f1") == 1 and "race: rung 1, cnn-w8: val_macro_f1" in first
    monkeypatch.setattr(loop, "fit_model", real)

    trained = TRAIN.run(store, config, {"shards": shards})
    out = capsys.readouterr().out
    assert "reusing cnn-w4's finished rung 1" in out and "reusing cnn-w8's finished rung 1" in out
    assert out.count("training plan:") == out.count(" trains on ")  # only last rungs train: the first ones are not trained again
    info = trained.info
    assert {entry["candidate"] for entry in info.race} == {"cnn-w4", "cnn-w8"}
    assert sum(entry["winner"] for entry in info.race) == 1 and info.winner["candidate"] in ("cnn-w4", "cnn-w8")
    assert all(0 <= entry["val_macro_f1"] <= 1 for entry in info.race)
    scores = _history(trained)["val_macro_f1"]  # the last rung kept its best epoch by the gate's metric
    assert info.best_epoch is not None and scores[info.best_epoch - 1] == max(scores)
    assert json.loads(trained.file("race.json").read_text())["winner"] == info.winner["candidate"]
