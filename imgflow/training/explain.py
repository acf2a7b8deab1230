"""Explanations of predictions: Grad-CAM heatmaps (Selvaraju et al., 2017) from the trained model.

For a class and an image, Grad-CAM weighs each channel of the last convolutional feature map by the
mean gradient of that class's score over it, sums the channels, keeps the positive part and scales it
to 0..1: where in the image the evidence for that class lies. It is computed on the model as trained
(a model with text keeps its text input: the heatmap explains the image's part of the answer).

The feature map is the output of the model's last convolution-block layer with a 4-D output (the last
convolution block of ``cnn`` and ``resnet9``); a model whose convolutions are all inside a nested backbone (``transfer``)
has none at its top level, and ``explainer`` says so by returning None.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

# Layers whose 4-D output is a learned feature map (preprocessing such as Resizing or Rescaling is not,
# nor the coarse grid that the default CNN's classifier reads: a few cells, too coarse to show where).
_FEATURE_LAYERS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "BatchNormalization", "ReLU", "Activation", "Add", "MaxPooling2D")


def feature_layer(model: Any) -> str | None:
    """The name of the last top-level layer with a 4-D feature map (N, H, W, C), or None."""
    for layer in reversed(model.layers):
        if type(layer).__name__ in _FEATURE_LAYERS and len(layer.output.shape) == 4:
            return layer.name
    return None


class GradCam:
    """Heatmaps for batches of a model's inputs."""

    def __init__(self, model: Any, layer: str) -> None:
        import keras

        self.layer = layer
        self.grad_model = keras.Model(model.input, [model.get_layer(layer).output, model.output])

    def __call__(self, inputs: Any, classes: np.ndarray) -> np.ndarray:
        """Heatmaps in 0..1 at the feature map's resolution, one per input, for ``classes``."""
        import tensorflow as tf

        with tf.GradientTape() as tape:
            features, probabilities = self.grad_model(inputs, training=False)
            chosen = tf.gather(probabilities, tf.constant(classes, tf.int32), axis=1, batch_dims=1)
        gradients = tape.gradient(chosen, features)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        maps = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()
        peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
        return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def explainer(model: Any) -> GradCam | None:
    layer = feature_layer(model)
    return GradCam(model, layer) if layer is not None else None


def overlay_png(image: np.ndarray, heatmap: np.ndarray, scale: int = 4) -> bytes:
    """The image (uint8 H x W x C) with the heatmap over it (a jet colour map at 45%), enlarged
    ``scale`` times so that small images stay visible, as PNG."""
    import matplotlib
    from PIL import Image

    height, width = image.shape[:2]
    base = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).convert("RGB")
    heat = Image.fromarray(np.uint8(255 * heatmap)).resize((width, height), Image.Resampling.BILINEAR)
    colored = Image.fromarray(np.uint8(255 * matplotlib.colormaps["jet"](np.asarray(heat) / 255.0)[..., :3]))
    blended = Image.blend(base, colored, 0.45).resize((width * scale, height * scale), Image.Resampling.NEAREST)
    out = io.BytesIO()
    blended.save(out, format="PNG")
    return out.getvalue()


def explain(cam: GradCam, inputs: Mapping[str, np.ndarray] | np.ndarray, images: np.ndarray, classes: np.ndarray) -> list[bytes]:
    """Overlays (PNG) of each image with the heatmap of its class in ``classes``."""
    return [overlay_png(image, heat) for image, heat in zip(images, cam(inputs, classes), strict=True)]
