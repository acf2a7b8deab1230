"""Grad-CAM on the project's own models (imgflow.training.explain)."""

import io

import numpy as np
from PIL import Image

from imgflow.config import TrainConfig
from imgflow.training.explain import explain, explainer, feature_layer
from imgflow.training.models import build_model, make_model


def test_gradcam_puts_the_evidence_for_a_class_where_it_lies_and_none_against() -> None:
    import keras

    # The score of class 1 grows with the image's brightness, class 0's shrinks; only the left half is lit.
    inputs = keras.Input((8, 8, 1), name="pixels")
    features = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(2, use_bias=False, kernel_initializer=keras.initializers.Constant([[-1.0, 1.0]]), name="probabilities")(pooled)
    model = keras.Model(inputs, outputs)
    assert feature_layer(model) == "features"
    image = np.zeros((2, 8, 8, 1), np.float32)
    image[:, :, :4] = 200
    for_one, for_zero = explainer(model)(image, np.array([1, 0]))
    assert for_one.shape == (8, 8) and for_one[:, :4].min() == 1.0 and for_one[:, 4:].max() == 0.0
    assert for_zero.max() == 0.0  # nothing in the image speaks for class 0


def test_overlays_are_enlarged_pngs_and_a_transfer_model_has_nothing_to_explain() -> None:
    model = make_model((8, 8, 1), 3, width=4)
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    overlays = explain(explainer(model), images.astype(np.float32), images, np.array([0, 2]))
    assert [Image.open(io.BytesIO(png)).size for png in overlays] == [(32, 32), (32, 32)]
    transfer = build_model((32, 32, 3), 3, TrainConfig(model="transfer", backbone="MobileNetV3Small", backbone_weights="random", backbone_size=32))
    assert feature_layer(make_model((8, 8, 1), 3, width=4)).startswith("re_lu")
    assert feature_layer(transfer) is None and explainer(transfer) is None  # its convolutions are all inside the backbone
