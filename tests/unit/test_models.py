import json

import numpy as np
import pytest

from imgflow.training.accel import cpu_flags, float32_copy, plan
from imgflow.config import TrainConfig
from imgflow.runtime.errors import ConfigError
from imgflow.training.models import build_model, compile_for_training, make_model, make_resnet9, make_transfer, set_backbone_trainable


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_model_takes_raw_pixels_and_returns_probabilities(shape: tuple[int, int, int]) -> None:
    model = make_model(shape, 5, width=4)
    pixels = np.random.default_rng(0).integers(0, 256, (3, *shape)).astype(np.float32)
    probabilities = model.predict(pixels, verbose=0)
    assert probabilities.shape == (3, 5)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_config_knows_every_model() -> None:
    from imgflow.config import BACKBONE_NAMES, MODEL_NAMES
    from imgflow.training.models import BACKBONES

    assert set(BACKBONE_NAMES) == set(BACKBONES)

    for name in MODEL_NAMES:
        config = TrainConfig(model=name, width=4, backbone_size=32, backbone="MobileNetV3Small", backbone_weights="random" if name == "transfer" else None)
        assert build_model((32, 32, 3), 3, config).output_shape == (None, 3)


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model 'vit'"):
        build_model((8, 8, 1), 2, TrainConfig.model_construct(model="vit"))  # past the config's own check


def test_resnet9_is_residual_and_has_the_classic_size_at_width_64() -> None:
    model = make_resnet9((32, 32, 3), 10, width=64)
    assert sum(layer.__class__.__name__ == "Add" for layer in model.layers) == 2
    assert 6.4e6 < model.count_params() < 6.7e6
    small = make_resnet9((28, 28, 1), 10, width=8)
    assert small.predict(np.zeros((2, 28, 28, 1), np.float32), verbose=0).shape == (2, 10)


def test_transfer_model_takes_grayscale_pixels_and_loads_local_backbone_weights(tmp_path) -> None:
    config = TrainConfig(model="transfer", backbone="MobileNetV2", backbone_weights="random", backbone_size=32)
    model = make_transfer((28, 28, 1), 4, config)
    assert model.predict(np.full((2, 28, 28, 1), 128, np.float32), verbose=0).shape == (2, 4)
    backbone = model.get_layer("backbone")
    set_backbone_trainable(model, False)
    assert not backbone.trainable and model.get_layer("probabilities").trainable
    # Offline, weights come from a local file of the backbone: save one, load it into a new model.
    path = tmp_path / "mobilenetv2.weights.h5"
    backbone.save_weights(path)
    loaded = make_transfer((28, 28, 1), 4, TrainConfig(model="transfer", backbone="MobileNetV2", backbone_size=32, backbone_weights=str(path)))
    assert all(np.array_equal(a, b) for a, b in zip(backbone.get_weights(), loaded.get_layer("backbone").get_weights(), strict=True))


@pytest.mark.parametrize(
    ("gpus", "tf_config", "precision", "jit", "expected"),
    [
        ([], None, "auto", "auto", ("default", "float32", False, 1)),
        (["/gpu:0"], None, "auto", "auto", ("default", "mixed_bfloat16", True, 1)),
        (["/gpu:0", "/gpu:1"], None, "auto", "auto", ("mirrored", "mixed_bfloat16", True, 1)),
        (["/gpu:0"], None, "float32", False, ("default", "float32", False, 1)),
        ([], json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}), "auto", "auto",
         ("multi_worker", "float32", False, 2)),
    ],
)
def test_hardware_plan(gpus, tf_config, precision, jit, expected) -> None:
    chosen = plan(precision, jit, gpus, tf_config)
    assert (chosen.strategy, chosen.precision, chosen.jit_compile, chosen.workers) == expected
    assert chosen.chief == (tf_config is None or json.loads(tf_config)["task"]["index"] == 0)


def test_auto_precision_on_a_cpu_is_bfloat16_only_with_amx_tiles(tmp_path) -> None:
    sapphire_rapids = frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
    assert plan("auto", "auto", [], None, cpu=sapphire_rapids, environ={}).precision == "mixed_bfloat16"
    assert plan("auto", "auto", [], None, cpu=frozenset({"avx512f", "avx512_bf16"}), environ={}).precision == "float32"  # AMD Zen 4
    assert plan("float32", "auto", [], None, cpu=sapphire_rapids).precision == "float32"  # as told
    assert not plan("auto", "auto", [], None, cpu=sapphire_rapids).jit_compile
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx512_bf16 amx_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx512_bf16", "amx_bf16"}
    assert cpu_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize(
    ("environ", "precision"),
    [
        ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "float32"),  # oneDNN limited below AMX: bf16 would be emulated
        ({"ONEDNN_MAX_CPU_ISA": "avx512_core_bf16"}, "float32"),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, "mixed_bfloat16"),
        ({"ONEDNN_MAX_CPU_ISA": "ALL"}, "mixed_bfloat16"),
        ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "float32"),  # oneDNN off, as TensorFlow has it on most AMD parts
        ({"TF_ENABLE_ONEDNN_OPTS": "1"}, "mixed_bfloat16"),
    ],
)
def test_auto_precision_is_float32_where_onednn_cannot_use_the_amx_tiles(environ, precision) -> None:
    sapphire_rapids = frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
    assert plan("auto", "auto", [], None, cpu=sapphire_rapids, environ=environ).precision == precision


def test_augmentation_moves_to_the_device_only_with_a_gpu_unless_told() -> None:
    assert plan("auto", "auto", ["/gpu:0"], None).augment_on_device
    assert not plan("auto", "auto", [], None).augment_on_device
    assert plan("auto", "auto", [], None, augment_on="device").augment_on_device
    assert not plan("auto", "auto", ["/gpu:0"], None, augment_on="host").augment_on_device
    with pytest.raises(ConfigError, match="augment_on must be auto, host or device"):
        plan("auto", "auto", [], None, augment_on="gpu")


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        plan("int4", "auto", [], None)


def test_a_bfloat16_model_exports_as_float32_with_the_same_weights() -> None:
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = compile_for_training(make_model((8, 8, 1), 3, width=4), 1e-3, 10)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert mixed.layers[2].compute_dtype == "bfloat16"
    copy = float32_copy(mixed)
    assert {layer.compute_dtype for layer in copy.layers} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(mixed.get_weights(), copy.get_weights(), strict=True))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1)).astype(np.float32)
    assert np.abs(mixed.predict(pixels, verbose=0) - copy.predict(pixels, verbose=0)).max() < 0.02
    # Compiled as the trained model was, so the saved model evaluates as a float32-trained one does.
    assert copy.get_compile_config() == mixed.get_compile_config()
    assert np.isfinite(copy.evaluate(pixels, np.array([0, 1, 2, 0]), verbose=0, return_dict=True)["loss"])


def test_balanced_class_weights_equalise_classes_and_skip_absent_ones() -> None:
    from imgflow.training.loop import balanced_class_weights

    weights = balanced_class_weights([30, 10, 0, 20])
    assert weights == {0: 60 / 90, 1: 60 / 30, 3: 60 / 60}
    assert {i: weights[i] * n for i, n in ((0, 30), (1, 10), (3, 20))} == {0: 20.0, 1: 20.0, 3: 20.0}


def test_the_train_key_holds_the_precision_auto_resolves_to_not_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bfloat16 model (an AMX machine's "auto") is never reused as the float32 model another machine
    of the same root would train for the same spec; an explicit setting keys the same as its "auto"."""
    from imgflow.training import accel
    from imgflow.stages.train import TRAIN

    def key(config: TrainConfig) -> str:
        return TRAIN.key(config, {"shards": "fingerprint"})

    monkeypatch.setattr(accel, "gpus_without_tensorflow", lambda environ=None: [])
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(accel, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    on_amx = key(TrainConfig())
    assert on_amx == key(TrainConfig(precision="mixed_bfloat16", jit_compile=False, augment_on="host"))
    monkeypatch.setattr(accel, "cpu_flags", lambda: frozenset())
    assert key(TrainConfig()) != on_amx
    assert key(TrainConfig()) == key(TrainConfig(precision="float32"))


def test_gpus_are_counted_without_tensorflow_as_cuda_visible_devices_narrows_them(tmp_path) -> None:
    from imgflow.training.accel import gpus_without_tensorflow

    driver = tmp_path / "gpus"
    for bus in ("0000:17:00.0", "0000:65:00.0"):
        (driver / bus).mkdir(parents=True)
    assert len(gpus_without_tensorflow({}, driver)) == 2
    assert len(gpus_without_tensorflow({"CUDA_VISIBLE_DEVICES": "1"}, driver)) == 1
    assert gpus_without_tensorflow({"CUDA_VISIBLE_DEVICES": ""}, driver) == []
    assert gpus_without_tensorflow({"CUDA_VISIBLE_DEVICES": "-1"}, driver) == []
    assert gpus_without_tensorflow({}, tmp_path / "no-driver") == []


# The random backbone trains for real (about 24 s on 2 cores): the full tier, not the fast one.
@pytest.mark.parametrize("weights", ["imagenet", pytest.param(None, marks=pytest.mark.slow)], ids=["pretrained", "random"])
def test_fine_tuning_keeps_a_pretrained_backbones_batch_norm_statistics_and_a_random_one_learns_its_own(
    weights: str | None, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imgflow.training.models import compile_for_training, make_transfer, set_backbone_trainable

    monkeypatch.setenv("IMGFLOW_WEIGHTS", str(tmp_path / "weights"))
    config = TrainConfig(model="transfer", backbone="EfficientNetLite0", backbone_weights=weights, backbone_size=32)
    model = make_transfer((32, 32, 3), 3, config)
    set_backbone_trainable(model, True, pretrained=weights is not None)
    compile_for_training(model, 1e-3, 10)
    norm = model.get_layer("backbone").get_layer("stem_bn")
    before = norm.moving_mean.numpy().copy()
    images = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    model.train_on_batch(images, np.arange(16) % 3)
    assert np.allclose(before, norm.moving_mean.numpy()) == (weights is not None)
    assert model.get_layer("backbone").get_layer("stem_conv").trainable  # the convolutions fine-tune either way


def test_transfer_means_transferred_weights_and_random_ones_only_by_name() -> None:
    """``model = "transfer"`` with nothing else: EfficientNet-Lite0's ImageNet weights at 224, the size
    they were trained at, frozen for a third of the epochs first. Random weights only when named; a
    backbone whose ImageNet weights imgflow has not is refused, saying what to write."""
    plain = TrainConfig(model="transfer")
    assert (plain.backbone, plain.backbone_weights, plain.backbone_size, plain.freeze_epochs) == ("EfficientNetLite0", "imagenet", 224, 5)
    assert plain.pretrained
    named = TrainConfig(model="transfer", backbone="EfficientNetLite0", epochs=3)
    assert named.backbone_weights == "imagenet" and named.freeze_epochs == 1
    random = TrainConfig(model="transfer", backbone_weights="random")
    assert not random.pretrained and random.backbone_size == 96 and random.freeze_epochs == 0
    assert TrainConfig().backbone_weights is None  # not a transfer model: nothing to resolve
    with pytest.raises(ConfigError, match='backbone = "MobileNetV2" needs backbone_weights.*"random"'):
        build_run_config_with({"model": "transfer", "backbone": "MobileNetV2"})
    # and the model is built with them: the backbone's weights are Lite0's ImageNet ones.
    from imgflow.training.weights import imagenet_weights

    model = make_transfer((32, 32, 3), 3, TrainConfig(model="transfer", backbone_size=32))
    reference = build_model((32, 32, 3), 3, TrainConfig(model="transfer", backbone_weights="random", backbone_size=32)).get_layer("backbone")
    reference.load_weights(imagenet_weights("EfficientNetLite0"))
    assert all(np.array_equal(a, b) for a, b in zip(model.get_layer("backbone").get_weights(), reference.get_weights(), strict=True))


def build_run_config_with(train: dict) -> None:
    """A spec's [train] section through the config layer, as a user's spec goes."""
    import tempfile
    from pathlib import Path

    from imgflow.config import build_run_config

    folder = Path(tempfile.mkdtemp())
    spec = folder / "spec.toml"
    spec.write_text('source = "sample:digits"\n[train]\n' + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in train.items()))
    build_run_config(str(spec), folder / "artifacts")
