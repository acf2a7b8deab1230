import numpy as np
import pytest

from imgflow.models import build_model, make_model


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_model_takes_raw_pixels_and_returns_probabilities(shape: tuple[int, int, int]) -> None:
    model = make_model(shape, 5, width=4)
    pixels = np.random.default_rng(0).integers(0, 256, (3, *shape)).astype(np.float32)
    probabilities = model.predict(pixels, verbose=0)
    assert probabilities.shape == (3, 5)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_config_knows_every_model() -> None:
    from imgflow.config import MODEL_NAMES
    from imgflow.models import MODELS

    assert set(MODEL_NAMES) == set(MODELS)


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model 'vit'"):
        build_model("vit", (8, 8, 1), 2, 4, 0.1)


def test_balanced_class_weights_equalise_classes_and_skip_absent_ones() -> None:
    from imgflow.stages.train import balanced_class_weights

    weights = balanced_class_weights([30, 10, 0, 20])
    assert weights == {0: 60 / 90, 1: 60 / 30, 3: 60 / 60}
    assert {i: weights[i] * n for i, n in ((0, 30), (1, 10), (3, 20))} == {0: 20.0, 1: 20.0, 3: 20.0}
