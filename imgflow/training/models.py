"""Models are functions: ``make_model(input_shape, num_classes)`` returns a compiled-ready keras.Model.

Preprocessing (scaling raw 0..255 pixels) lives inside the model, so every export takes raw pixels.
A model with text (``add_text``) takes {"pixels", "tokens"}: token ids from ``imgflow.data.text.TextEncoder``,
which the SavedModel export puts in front of it so that it takes raw strings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import keras
import numpy as np

from imgflow.config import TrainConfig
from imgflow.training.optim import Recipe, loss, optimizer, training_metrics
from imgflow.training.weights import resolve as resolve_weights


def _conv_bn_relu(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    # momentum 0.9: the moving statistics settle within the few hundred steps of a small dataset.
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    return keras.layers.ReLU()(x)


GRID = 3  # the classifier sees the last feature map pooled to at most GRID x GRID cells


def _pixels(input_shape: tuple[int, ...], input_size: int | None) -> tuple[keras.KerasTensor, keras.KerasTensor, tuple[int, ...]]:
    """The model's raw-pixel input, its pixels scaled to 0..1 (and resized to ``input_size`` a side,
    bilinear, when given: antialiasing would need an op ONNX export lacks), and the shape the network sees."""
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = inputs
    if input_size is not None and tuple(input_shape[:2]) != (input_size, input_size):
        x = keras.layers.Resizing(input_size, input_size, name="input_size")(x)
        input_shape = (input_size, input_size, input_shape[2])
    return inputs, keras.layers.Rescaling(1.0 / 255.0)(x), input_shape


def make_model(
    input_shape: tuple[int, ...], num_classes: int, width: int = 16, dropout: float = 0.3, input_size: int | None = None
) -> keras.Model:
    """A small VGG-style CNN that is cheap on an ordinary CPU: one conv at full resolution, then
    pooling at once (most of a plain CNN's multiplies are spent at full resolution), a conv pair at
    half resolution, pooling, one wider conv, and a classifier over a coarse grid of the last feature
    map (``GRID`` x ``GRID`` average-pooled cells) rather than its global average: where a stroke lies
    is what tells a 6 from a 9, and global pooling forgets it.

    Channels ``width``, 2x and 4x (multiples of 8 at the default 16: what CPU and GPU kernels tile
    best). With batch norm it works at any input size from 8x8 up; at 28x28 and width 16 it costs 3.7M
    multiplies an image (``imgflow.training.sizing.cnn_macs`` counts them; benchmarks/RESULTS.md compares it
    with a two-convs-per-stage design). ``input_size`` resizes the images inside the model first.
    """
    inputs, x, input_shape = _pixels(input_shape, input_size)
    x = _conv_bn_relu(x, width)
    if min(input_shape[:2]) >= 8:
        x = keras.layers.MaxPooling2D()(x)
    x = _conv_bn_relu(x, 2 * width)
    x = _conv_bn_relu(x, 2 * width)
    if min(input_shape[:2]) >= 16:
        x = keras.layers.MaxPooling2D()(x)
    x = _conv_bn_relu(x, 4 * width)
    cells = max(-(-size // GRID) for size in x.shape[1:3])
    x = keras.layers.AveragePooling2D(cells, padding="same", name="grid")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")


def _residual(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    return keras.layers.Add()([x, _conv_bn_relu(_conv_bn_relu(x, filters), filters)])


def make_resnet9(
    input_shape: tuple[int, ...], num_classes: int, width: int = 64, dropout: float = 0.0, input_size: int | None = None
) -> keras.Model:
    """A residual CNN in the spirit of ResNet-9 (the fast CIFAR-10 trainers): a prep conv, then three
    stages of conv + pool with a residual block after the first and the last, global max pooling and a
    linear classifier. ``width`` 64 gives the classic 64-128-256-512 channels (6.5M parameters)."""
    inputs, x, input_shape = _pixels(input_shape, input_size)
    x = _conv_bn_relu(x, width)
    x = keras.layers.MaxPooling2D()(_conv_bn_relu(x, 2 * width))
    x = _residual(x, 2 * width)
    x = keras.layers.MaxPooling2D()(_conv_bn_relu(x, 4 * width))
    x = keras.layers.MaxPooling2D()(_conv_bn_relu(x, 8 * width)) if min(input_shape[:2]) >= 8 else _conv_bn_relu(x, 8 * width)
    x = _residual(x, 8 * width)
    x = keras.layers.GlobalMaxPooling2D()(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="resnet9")


# Backbones offered for transfer learning (keras.applications', and imgflow.training.efficientnet's Lite0), with
# how each wants its pixels scaled (0..255 in: scale, offset) when its own preprocessing is not built in.
BACKBONES = {
    "EfficientNetLite0": (1.0, 0.0),  # includes its preprocessing; ImageNet weights offline (imgflow.training.weights)
    "MobileNetV2": (1 / 127.5, -1.0),
    "MobileNetV3Small": (1.0, 0.0),  # includes its preprocessing
    "EfficientNetB0": (1.0, 0.0),  # includes its preprocessing
    "ResNet50V2": (1 / 127.5, -1.0),
    "VGG16": (1.0, 0.0),  # Caffe's preprocessing instead: CaffeStyle
}
BACKBONE = "backbone"  # the backbone's layer name in a transfer model


@keras.saving.register_keras_serializable(package="imgflow")
class CaffeStyle(keras.layers.Layer):
    """RGB 0..255 to what VGG16's ImageNet weights were trained on (Caffe): BGR, the ImageNet mean
    subtracted (``keras.applications.vgg16.preprocess_input``, as a layer that saves and exports)."""

    def call(self, images: keras.KerasTensor) -> keras.KerasTensor:
        bgr = keras.ops.flip(images, axis=-1)
        return bgr - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=bgr.dtype)


def backbone_network(name: str, size: int) -> keras.Model:
    """A backbone without its top, average pooled, random weights, named ``backbone``."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    if name == "EfficientNetLite0":
        from imgflow.training.efficientnet import efficientnet_lite0

        return efficientnet_lite0((size, size, 3), include_top=False, name=BACKBONE)
    return getattr(keras.applications, name)(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg", name=BACKBONE)


def make_transfer(input_shape: tuple[int, ...], num_classes: int, config: TrainConfig) -> keras.Model:
    """A backbone (``BACKBONES``; no top, average pooled) under a new softmax head.

    Inputs are resized to ``backbone_size`` and grayscale is repeated to RGB inside the model, so it
    still takes raw pixels. Weights come from ``backbone_weights``: a local ``.weights.h5`` file of the
    backbone, ``"imagenet"`` for the ImageNet weights imported offline (``imgflow.training.weights``), or
    ``None`` for random ones; nothing is downloaded. A pretrained backbone's batch-norm layers stay
    frozen while it is fine-tuned (``set_backbone_trainable``); from random weights it trains like any network.
    """
    size = config.backbone_size
    assert size is not None, "a transfer model's backbone_size is set once its config is validated"
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = inputs
    if tuple(input_shape[:2]) != (size, size):
        x = keras.layers.Resizing(size, size)(x)
    if input_shape[2] == 1:
        x = keras.layers.Concatenate()([x, x, x])
    backbone = backbone_network(config.backbone, size)
    scale, offset = BACKBONES[config.backbone]
    if config.backbone == "VGG16":
        x = CaffeStyle(name="caffe_style")(x)
    elif (scale, offset) != (1.0, 0.0):
        x = keras.layers.Rescaling(scale, offset)(x)
    weights = resolve_weights(config.backbone, config.backbone_weights)
    if weights is not None:
        backbone.load_weights(weights)
    x = backbone(x)  # its batch norm: see set_backbone_trainable
    x = keras.layers.Dropout(config.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"transfer_{config.backbone.lower()}")


@keras.saving.register_keras_serializable(package="imgflow")
class MaskedMean(keras.layers.Layer):
    """The mean of token embeddings [N, L, D] over the tokens that are not padding (id 0); zeros for a
    text with no tokens, which is what a record without text looks like to the fusion layers."""

    def call(self, embeddings: keras.KerasTensor, tokens: keras.KerasTensor) -> keras.KerasTensor:
        ops = keras.ops
        present = ops.cast(ops.not_equal(tokens, 0), embeddings.dtype)[:, :, None]
        count = ops.maximum(ops.sum(present, axis=1), 1.0)
        return ops.sum(embeddings * present, axis=1) / count


def add_text(image_model: keras.Model, vocabulary_size: int, config: TrainConfig) -> keras.Model:
    """``image_model`` with a text tower: token ids (``text_length`` of them, 0 = padding) through an
    embedding and a masked mean, concatenated with the image model's features (the input of its
    classifier), then one hidden layer and a new classifier."""
    layers = {
        "text_embedding": keras.layers.Embedding(vocabulary_size, config.text_dim, name="text_embedding"),
        "text_features": MaskedMean(name="text_features"),
        "fusion": keras.layers.Concatenate(name="fusion"),
        "fused": keras.layers.Dense(128, activation="relu", name="fused"),
        "fused_dropout": keras.layers.Dropout(config.dropout, name="fused_dropout"),
        "probabilities": keras.layers.Dense(image_model.output_shape[-1], activation="softmax", dtype="float32", name="probabilities"),
    }
    tokens = keras.Input(shape=(config.text_length,), dtype="int32", name="tokens")
    outputs = _fuse(layers.__getitem__, image_model.get_layer("probabilities").input, tokens)
    return keras.Model({"pixels": image_model.inputs[0], "tokens": tokens}, outputs, name=f"{image_model.name}_text")


def text_tail(model: keras.Model, image_features: keras.KerasTensor) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """A new token input and the probabilities of a text ``model``'s own fusion layers (shared, not
    copied) over it and ``image_features``: the part of the model after its image features, for a head
    trained on a frozen backbone's cached features (``imgflow.training.frozen.head_of``)."""
    tokens = keras.Input(shape=model.get_layer("tokens").output.shape[1:], dtype="int32", name="tokens")
    return tokens, _fuse(model.get_layer, image_features, tokens)


def _fuse(layer: Any, image_features: keras.KerasTensor, tokens: keras.KerasTensor) -> keras.KerasTensor:
    """The text tower and fusion, with the layers ``layer(name)`` gives: the one wiring of ``add_text``."""
    text = layer("text_features")(layer("text_embedding")(tokens), tokens)
    fused = layer("fused")(layer("fusion")([image_features, text]))
    return layer("probabilities")(layer("fused_dropout")(fused))


def build_model(input_shape: tuple[int, ...], num_classes: int, config: TrainConfig, vocabulary_size: int = 0) -> keras.Model:
    """The model ``config`` names; with ``config.text``, with a text tower over ``vocabulary_size`` ids."""
    if config.model == "cnn":
        model = make_model(input_shape, num_classes, width=config.width, dropout=config.dropout, input_size=config.input_size)
    elif config.model == "resnet9":
        model = make_resnet9(input_shape, num_classes, width=config.width, dropout=config.dropout, input_size=config.input_size)
    elif config.model == "transfer":
        model = make_transfer(input_shape, num_classes, config)
    else:
        raise ValueError(f"unknown model {config.model!r}; known: cnn, resnet9, transfer")
    return add_text(model, vocabulary_size, config) if config.text else model


def set_backbone_trainable(model: keras.Model, trainable: bool, pretrained: bool = True) -> None:
    """Freeze or unfreeze a transfer model's backbone (no-op for models without one). Unfrozen, a
    ``pretrained`` backbone keeps its batch-norm layers frozen: a frozen batch-norm layer runs in
    inference mode, with the statistics the weights were trained with, which small fine-tuning batches of
    another domain would otherwise overwrite. (Calling the backbone with ``training=False`` does not do
    this in Keras 3.15: its statistics moved anyway, measured.) A random backbone trains them all."""
    names = {layer.name for layer in model.layers}
    if BACKBONE not in names:
        return
    backbone = model.get_layer(BACKBONE)
    backbone.trainable = trainable
    if trainable and pretrained:
        for layer in backbone._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def compile_for_training(
    model: keras.Model, learning_rate: float, total_steps: int, jit_compile: bool = False, recipe: Recipe | None = None
) -> keras.Model:
    """Adam (AdamW with weight decay) at ``learning_rate`` under the recipe's schedule over
    ``total_steps`` (by default: a warm-up over the first tenth of the steps, then cosine decay), and the
    recipe's loss (cross-entropy, smoothed with label smoothing): see ``imgflow.training.optim``."""
    recipe = recipe or Recipe()
    model.compile(
        optimizer=optimizer(learning_rate, total_steps, recipe),
        loss=loss(recipe),
        metrics=training_metrics(recipe.metric, int(model.output_shape[-1])),
        jit_compile=jit_compile,
    )
    return model


def load_model(path: str | Path, compile: bool = True) -> keras.Model:
    """A saved model (``model.keras`` or a checkpoint); this module defines the custom layers it may hold.
    ``compile=False`` for inference only (validate, export): no optimizer is rebuilt."""
    return keras.models.load_model(path, compile=compile)


def model_fingerprint(model: keras.Model) -> str:
    """A hash of what the model computes: its architecture and its weights, not its file's bytes."""
    digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weights in model.get_weights():
        digest.update(str(weights.shape).encode() + str(weights.dtype).encode())
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()
