"""Models are functions: ``make_model(input_shape, num_classes)`` returns a compiled-ready keras.Model.

Preprocessing (scaling raw 0..255 pixels) lives inside the model, so every export takes raw pixels.
"""

from __future__ import annotations

import hashlib
import json

import keras
import numpy as np

from imgflow.config import TrainConfig


def _conv_bn_relu(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    # momentum 0.9: the moving statistics settle within the few hundred steps of a small dataset.
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    return keras.layers.ReLU()(x)


def make_model(input_shape: tuple[int, int, int], num_classes: int, width: int = 24, dropout: float = 0.3) -> keras.Model:
    """A small VGG-style CNN: two conv pairs with pooling, one wider conv, global pooling, softmax.

    With batch norm and global average pooling it works at any input size from 8x8 up, and at width 24
    it has about 80k parameters: enough for 98%+ on a few thousand MNIST digits, cheap on a CPU.
    """
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = _conv_bn_relu(x, width)
    x = _conv_bn_relu(x, width)
    if min(input_shape[:2]) >= 8:
        x = keras.layers.MaxPooling2D()(x)
    x = _conv_bn_relu(x, 2 * width)
    x = _conv_bn_relu(x, 2 * width)
    if min(input_shape[:2]) >= 16:
        x = keras.layers.MaxPooling2D()(x)
    x = _conv_bn_relu(x, 4 * width)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")


MODELS = {"cnn": make_model}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, width: int, dropout: float) -> keras.Model:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](input_shape, num_classes, width=width, dropout=dropout)


def compile_for_training(model: keras.Model, config: TrainConfig, steps_per_epoch: int) -> keras.Model:
    """Adam with a learning rate that warms up over the first tenth of the steps, then decays (cosine)."""
    total_steps = steps_per_epoch * config.epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 10,
        decay_steps=max(1, total_steps - total_steps // 10),
        warmup_target=config.learning_rate,
        warmup_steps=total_steps // 10,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def model_fingerprint(model: keras.Model) -> str:
    """A hash of what the model computes: its architecture and its weights, not its file's bytes."""
    digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weights in model.get_weights():
        digest.update(str(weights.shape).encode() + str(weights.dtype).encode())
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()
