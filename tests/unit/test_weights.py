"""imgflow weights import: a weights file's 3x3 convolutions mapped by order and shape onto a backbone."""

from pathlib import Path

import numpy as np
import pytest

from imgflow.runtime.errors import ConfigError
from imgflow.training.convolutions import import_backbone

# VGG16's convolutions, block by block (output channels; 3x3 kernels), as HED's weights file lays them out.
VGG16 = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


def _hed_like(path: Path, blocks: list[list[int]] = VGG16, kernel: int = 3) -> dict[str, np.ndarray]:
    import h5py

    rng, kernels, inputs = np.random.default_rng(0), {}, 3
    with h5py.File(path, "w") as handle:
        for number, block in enumerate(blocks, 1):
            for index, outputs in enumerate(block):
                name = f"block{number}/layers/conv2d{'_' + str(index) if index else ''}"
                kernels[name] = rng.normal(size=(kernel, kernel, inputs, outputs)).astype(np.float32)
                handle[f"{name}/vars/0"] = kernels[name]
                handle[f"{name}/vars/1"] = np.full(outputs, number, np.float32)
                inputs = outputs
            handle[f"dsn{number}/vars/0"] = np.zeros((1, 1, inputs, 1), np.float32)  # a side output: left out
    return kernels


def test_vgg16_takes_every_convolution_in_order_and_leaves_the_rest(tmp_path: Path) -> None:
    import keras

    from imgflow.training.models import backbone_network

    kernels = _hed_like(tmp_path / "hed.weights.h5")
    found = import_backbone(tmp_path / "hed.weights.h5", "VGG16", tmp_path / "out" / "vgg16.weights.h5")
    assert [(s, t) for s, t, _ in found["mapped"]][:3] == [
        ("block1/layers/conv2d", "block1_conv1"), ("block1/layers/conv2d_1", "block1_conv2"), ("block2/layers/conv2d", "block2_conv1")
    ]
    assert len(found["mapped"]) == 13 and found["left_out"] == [f"dsn{n}/vars/0" for n in range(1, 6)]
    network = backbone_network("VGG16", 48)
    network.load_weights(tmp_path / "out" / "vgg16.weights.h5")
    convolutions = [layer for layer in network.layers if isinstance(layer, keras.layers.Conv2D)]
    assert np.array_equal(convolutions[4].kernel.numpy(), kernels["block3/layers/conv2d"])
    assert np.array_equal(convolutions[12].bias.numpy(), np.full(512, 5, np.float32))


def test_a_file_that_does_not_fit_is_refused_naming_both_sides(tmp_path: Path) -> None:
    _hed_like(tmp_path / "short.weights.h5", VGG16[:4])
    with pytest.raises(ConfigError, match="holds 10 3x3 convolutions, VGG16 has 13"):
        import_backbone(tmp_path / "short.weights.h5", "VGG16", tmp_path / "x.weights.h5")
    _hed_like(tmp_path / "wide.weights.h5", [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 1024]])
    with pytest.raises(ConfigError, match="block5/layers/conv2d_2 has a \\(3, 3, 512, 1024\\) kernel, VGG16's block5_conv3 wants"):
        import_backbone(tmp_path / "wide.weights.h5", "VGG16", tmp_path / "x.weights.h5")
    (tmp_path / "text.weights.h5").write_text("not hdf5")
    with pytest.raises(ConfigError, match="is not a Keras weights file"):
        import_backbone(tmp_path / "text.weights.h5", "VGG16", tmp_path / "x.weights.h5")
    assert not (tmp_path / "x.weights.h5").exists()
