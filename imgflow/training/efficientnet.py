"""EfficientNet-Lite0 in Keras, and how PyTorch's names for its weights map onto it.

EfficientNet-Lite (Google, 2020) is EfficientNet-B0's mobile variant: no squeeze-and-excitation,
ReLU6 instead of swish, and a stem (32 channels) and head (1280) that do not scale. Its seven stages
of inverted-residual blocks (``BLOCKS``) follow the reference (``efficientnet_lite_builder.py``, and
``efficientnet_pytorch`` for the PyTorch names). Padding is TensorFlow's ``same`` (on a stride of 2, the
extra row and column at the bottom and right), which the published weights were trained with; the
PyTorch port reproduces it with its ``Conv2dStaticSamePadding``. Pixels are normalised as the
reference's Lite models expect them: ``(x - 127) / 128``, inside the model, so it takes 0..255 RGB.

Layer names say where each PyTorch tensor goes (``torch_names``): ``stem_conv``/``stem_bn``,
``block{i}_expand_conv``/``_expand_bn`` (absent in block 0, whose expansion is 1),
``block{i}_depthwise_conv``/``_depthwise_bn``, ``block{i}_project_conv``/``_project_bn``,
``head_conv``/``head_bn`` and ``predictions``.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

# (repeats, kernel, stride of the first, expansion, input channels, output channels) of each stage
BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM, HEAD = 32, 1280
EPSILON = 1e-3  # the reference's batch-norm epsilon (Keras' default is 1e-3 too; stated, not assumed)
MEAN, SCALE = 127.0, 128.0
NATIVE_SIZE = 224


def _bn_relu6(x: keras.KerasTensor, name: str, activate: bool = True) -> keras.KerasTensor:
    x = keras.layers.BatchNormalization(epsilon=EPSILON, momentum=0.99, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if activate else x


def _block(x: keras.KerasTensor, index: int, kernel: int, stride: int, expand: int, filters: int) -> keras.KerasTensor:
    """One inverted-residual (MBConv) block without squeeze-and-excitation."""
    name = f"block{index}"
    inputs = x
    channels = x.shape[-1]
    if expand != 1:
        x = keras.layers.Conv2D(channels * expand, 1, use_bias=False, name=f"{name}_expand_conv")(x)
        x = _bn_relu6(x, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_depthwise_conv")(x)
    x = _bn_relu6(x, f"{name}_depthwise")
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project_conv")(x)
    x = _bn_relu6(x, f"{name}_project", activate=False)
    if stride == 1 and channels == filters:
        x = keras.layers.Add(name=f"{name}_add")([inputs, x])
    return x


def efficientnet_lite0(
    input_shape: tuple[int, int, int] = (NATIVE_SIZE, NATIVE_SIZE, 3),
    include_top: bool = True,
    classes: int = 1000,
    dropout: float = 0.2,
    name: str = "efficientnet_lite0",
) -> keras.Model:
    """The network, random weights. With ``include_top``: ImageNet's classifier (softmax over
    ``classes``); without: the 1280 features, average pooled (a backbone for transfer)."""
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = keras.layers.Rescaling(1.0 / SCALE, offset=-MEAN / SCALE, name="normalize")(inputs)
    x = keras.layers.Conv2D(STEM, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _bn_relu6(x, "stem")
    index = 0
    for repeats, kernel, stride, expand, _, filters in BLOCKS:
        for repeat in range(repeats):
            x = _block(x, index, kernel, stride if repeat == 0 else 1, expand, filters)
            index += 1
    x = keras.layers.Conv2D(HEAD, 1, use_bias=False, name="head_conv")(x)
    x = _bn_relu6(x, "head")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = keras.layers.Dropout(dropout, name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=name)


def _conv(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _depthwise(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(2, 3, 0, 1)  # (C, 1, H, W) -> (H, W, C, 1)


def _dense(kernel: np.ndarray) -> np.ndarray:
    return kernel.T  # (out, in) -> (in, out)


def _same(values: np.ndarray) -> np.ndarray:
    return values


_BN = ("weight", "bias", "running_mean", "running_var")  # Keras' order: gamma, beta, moving mean, variance
COUNTERS = ".num_batches_tracked"  # PyTorch's training-step counters: not weights


def torch_names(model: keras.Model) -> dict[str, tuple[str, int, Callable[[np.ndarray], np.ndarray]]]:
    """PyTorch name -> (Keras layer, index in its weights, the layout change) for every weight of
    ``model`` (an ``efficientnet_lite0``, with or without its top)."""
    layers = {layer.name for layer in model.layers}
    found: dict[str, tuple[str, int, Callable[[np.ndarray], np.ndarray]]] = {}

    def bn(prefix: str, layer: str) -> None:
        for slot, field in enumerate(_BN):
            found[f"{prefix}.{field}"] = (layer, slot, _same)

    found["_conv_stem.weight"] = ("stem_conv", 0, _conv)
    bn("_bn0", "stem_bn")
    blocks = sum(repeats for repeats, *_ in BLOCKS)
    for index in range(blocks):
        torch, keras_name = f"_blocks.{index}", f"block{index}"
        if f"{keras_name}_expand_conv" in layers:
            found[f"{torch}._expand_conv.weight"] = (f"{keras_name}_expand_conv", 0, _conv)
            bn(f"{torch}._bn0", f"{keras_name}_expand_bn")
        found[f"{torch}._depthwise_conv.weight"] = (f"{keras_name}_depthwise_conv", 0, _depthwise)
        bn(f"{torch}._bn1", f"{keras_name}_depthwise_bn")
        found[f"{torch}._project_conv.weight"] = (f"{keras_name}_project_conv", 0, _conv)
        bn(f"{torch}._bn2", f"{keras_name}_project_bn")
    found["_conv_head.weight"] = ("head_conv", 0, _conv)
    bn("_bn1", "head_bn")
    if "predictions" in layers:
        found["_fc.weight"] = ("predictions", 0, _dense)
        found["_fc.bias"] = ("predictions", 1, _same)
    return found
