import numpy as np
import pytest

from imgflow.config import GateConfig
from imgflow.registry.gate import decide

GATE = GateConfig(min_accuracy=0.9, tolerance=0.01)


@pytest.mark.parametrize(
    ("candidate", "champion", "promote"),
    [
        (0.95, None, True),  # first model, above the floor
        (0.90, None, True),  # exactly at the floor
        (0.89, None, False),  # below the floor
        (0.95, 0.955, True),  # a little worse, within tolerance
        (0.95, 0.97, False),  # worse than the champion beyond tolerance
        (0.85, 0.80, False),  # better than the champion but below the floor
    ],
)
def test_gate(candidate: float, champion: float | None, promote: bool) -> None:
    decision = decide(candidate, champion, GATE)
    assert decision.promote is promote
    assert len(decision.reasons) == 2
    assert decision.candidate_accuracy == candidate and decision.champion_accuracy == champion


def test_reasons_say_why() -> None:
    decision = decide(0.95, 0.97, GATE)
    assert "< champion 0.9700 - tolerance 0.0100" in decision.reasons[1]


def _predictions(labels, wrong_candidate, wrong_champion):
    import numpy as np

    labels = np.asarray(labels)
    candidate, champion = labels.copy(), labels.copy()
    candidate[wrong_candidate] = (labels[wrong_candidate] + 1) % 3
    champion[wrong_champion] = (labels[wrong_champion] + 1) % 3
    return labels, candidate, champion


def test_the_paired_test_tells_noise_from_a_real_difference() -> None:
    from imgflow.registry.gate import paired

    labels = [0, 1, 2] * 400
    # 3 disagreements against 1: noise (p about 0.31); 40 against 5: not noise.
    noise = paired(*_predictions(labels, [0, 1, 2], [3]), ["a", "b", "c"])
    assert (noise.candidate_only, noise.champion_only) == (1, 3) and noise.p_worse == pytest.approx(0.3125)
    worse = paired(*_predictions(labels, list(range(40)), list(range(100, 105))), ["a", "b", "c"])
    assert worse.p_worse < 1e-6 and worse.p_better > 0.99
    gate = GateConfig(min_accuracy=0.5, tolerance=1.0)  # the tolerance alone would promote both
    assert decide(0.99, 0.99, gate, noise).promote
    decision = decide(0.97, 0.99, gate, worse)
    assert not decision.promote
    assert any(reason.startswith("significantly worse than the champion: of 1200 test records, 5 only the candidate") for reason in decision.reasons)


def test_a_regression_in_one_class_is_refused_and_named_though_overall_accuracy_is_within_tolerance() -> None:
    from imgflow.registry.gate import paired

    labels = [0, 1, 2] * 400  # 400 of each class
    lost = [index for index in range(0, 1200, 3)][:60]  # 60 of class "cat" (index 0) now wrong: recall 1.0 -> 0.85
    gained = [index for index in range(1, 1200, 3)][:40]  # the champion got 40 "dog" wrong that the candidate gets right
    comparison = paired(*_predictions(labels, lost, gained), ["cat", "dog", "bird"])
    decision = decide(0.95, 0.9667, GateConfig(min_accuracy=0.5, tolerance=0.02, max_class_drop=0.05), comparison)
    assert not decision.promote
    named = [reason for reason in decision.reasons if reason.startswith("class 'cat' recall fell from 1.0000 to 0.8500")]
    assert named and "max_class_drop 0.05" in named[0]
    assert not any("'dog'" in reason or "'bird'" in reason for reason in decision.reasons)


def test_a_regression_in_one_slice_is_refused_and_named() -> None:
    from imgflow.data.partitions import slice_of
    from imgflow.registry.gate import paired

    labels = [0, 1, 2] * 400
    ids = [f"date=2024-05-0{1 + i % 3}/part-0.parquet#{i}" for i in range(1200)]  # three days, 400 records each
    slices = [slice_of(record, "date") for record in ids]
    lost = [i for i in range(1200) if slices[i] == "2024-05-03"][:60]  # the third day: accuracy 1.0 -> 0.85
    comparison = paired(*_predictions(labels, lost, []), ["a", "b", "c"], slices)
    assert [s.name for s in comparison.slices] == ["2024-05-01", "2024-05-02", "2024-05-03"]
    gate = GateConfig(min_accuracy=0.5, tolerance=0.1, slice_by="date")
    decision = decide(0.95, 1.0, gate, comparison)
    assert not decision.promote
    assert any(reason.startswith("slice date=2024-05-03 accuracy fell from 1.0000 to 0.8500 on 400 records") for reason in decision.reasons)
    assert not any("2024-05-01" in reason or "2024-05-02" in reason for reason in decision.reasons)


def test_the_gate_judges_the_metric_the_spec_names_and_says_which() -> None:
    """On imbalanced data a model that always answers the majority class has high accuracy and a poor
    balanced accuracy: the gate in balanced terms refuses what the gate in plain accuracy promotes."""
    from imgflow.registry.gate import score

    labels = np.array([0] * 90 + [1] * 10)
    majority = np.zeros(100, "int64")
    assert score("accuracy", labels, majority, 2) == 0.9
    assert score("balanced_accuracy", labels, majority, 2) == 0.5
    assert score("macro_f1", labels, majority, 2) == pytest.approx((2 * 0.9 / 1.9 + 0.0) / 2)
    perfect = score("macro_f1", labels, labels, 3)  # a class absent from the labels does not count
    assert perfect == 1.0
    plain = decide(score("accuracy", labels, majority, 2), None, GateConfig(min_accuracy=0.8))
    balanced = decide(score("balanced_accuracy", labels, majority, 2), None, GateConfig(min_accuracy=0.8, metric="balanced_accuracy"))
    assert plain.promote and not balanced.promote
    assert balanced.reasons[0] == "balanced_accuracy 0.5000 < floor 0.8000"
    with pytest.raises(ValueError, match="unknown metric"):
        score("auc", labels, majority, 2)
