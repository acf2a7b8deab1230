"""imgflow.training.optim: schedules, losses and the validation rules, without training."""

import math

import numpy as np
import pytest

from imgflow.training.optim import LinearToZero, OneCycle, Recipe, SmoothedCrossentropy, best_epoch, learning_rate, plateau_rates, stops_early


def _rates(schedule, steps) -> list[float]:
    return [float(schedule(step)) for step in steps]


def test_exponential_decays_once_per_epoch() -> None:
    schedule = learning_rate(0.1, 40, Recipe("exponential", steps_per_epoch=10, decay_rate=0.5))
    assert _rates(schedule, [0, 9, 10, 19, 20, 35]) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.0125])


def test_one_cycle_rises_to_the_rate_then_anneals_far_below_it() -> None:
    schedule = learning_rate(0.1, 100, Recipe("one_cycle"))
    assert isinstance(schedule, OneCycle)
    start, peak, middle, end = _rates(schedule, [0, 30, 65, 100])
    assert start == pytest.approx(0.1 / 25) and peak == pytest.approx(0.1)
    assert middle == pytest.approx(0.1e-4 + (0.1 - 0.1e-4) * 0.5, rel=1e-4) and end == pytest.approx(1e-5)
    assert OneCycle.from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_cosine_warms_up_then_decays_and_plateau_is_a_constant() -> None:
    warm, top, last = _rates(learning_rate(0.1, 100, Recipe("cosine")), [0, 10, 100])
    assert warm == pytest.approx(0.01) and top == pytest.approx(0.1) and last < 1e-6
    assert learning_rate(0.1, 100, Recipe("plateau")) == 0.1
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate(0.1, 100, Recipe("triangle"))


def test_linear_warms_up_then_decays_to_zero_at_the_last_step() -> None:
    schedule = learning_rate(0.1, 200, Recipe("linear"))
    first, top, middle, last = _rates(schedule, [0, 10, 105, 200])
    assert first == pytest.approx(0.01) and top == pytest.approx(0.1)
    assert middle == pytest.approx(0.05, rel=1e-3) and last == 0.0
    assert LinearToZero.from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_the_plateau_rule_replayed_from_validation_losses() -> None:
    losses = [1.0, 0.8, 0.9, 0.85, 0.7, 0.75, 0.72, 0.71]
    # patience 2: epochs 3-4 bring nothing better than 0.8 -> halve; 6-7 nothing better than 0.7 -> halve
    assert plateau_rates(losses, 1.0, 0.5, 2) == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_early_stopping_follows_the_best_epoch() -> None:
    assert best_epoch([0.9, 0.5, 0.5, 0.6]) == 2  # the earliest of equals
    assert not stops_early([0.9, 0.5, 0.6], 2) and stops_early([0.9, 0.5, 0.6, 0.7], 2)
    assert not stops_early([0.9, 0.5, 0.6, 0.7], 0) and not stops_early([], 3)


def test_label_smoothing_moves_the_loss_of_a_confident_right_answer_off_zero() -> None:
    labels, confident = np.array([1, 0]), np.array([[1e-7, 1 - 1e-7], [1 - 1e-7, 1e-7]], np.float32)
    plain = float(SmoothedCrossentropy(0.0)(labels, confident))
    smoothed = float(SmoothedCrossentropy(0.2)(labels, confident))
    assert plain < 1e-5 and smoothed == pytest.approx(0.1 * -math.log(1e-7) + 0.9 * -math.log(1 - 1e-7), rel=1e-3)


@pytest.mark.parametrize("kind", ["balanced_accuracy", "macro_f1"])
def test_the_keras_metric_of_a_budgeted_run_agrees_with_the_gates(kind: str) -> None:
    """What a budgeted run keeps its best epoch by (summed over batches, in Keras) is what the gate
    computes (``imgflow.registry.gate.score``) on the same predictions."""
    from imgflow.registry.gate import score
    from imgflow.training.optim import ClassBalancedScore

    rng = np.random.default_rng(0)
    labels = rng.choice(4, size=300, p=[0.7, 0.2, 0.1, 0.0])
    probabilities = rng.random((300, 4))
    probabilities[np.arange(300), labels] += rng.random(300) * 1.5  # mostly right, not always
    metric = ClassBalancedScore(kind, 4)
    for start in range(0, 300, 64):  # batches, as validation runs
        metric.update_state(labels[start : start + 64], probabilities[start : start + 64])
    assert float(metric.result()) == pytest.approx(score(kind, labels, probabilities.argmax(axis=1), 4), abs=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0
