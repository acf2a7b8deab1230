"""Drift statistics on real digits: profiles, the checks, the MMD test and the gate's use of them."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from imgflow.config import DriftConfig, GateConfig
from imgflow.data.cleantable import pixel_array
from imgflow.serving.drift_checks import judge, mmd_test, profile_checks, view_checks
from imgflow.data.profile import Profile, read_profile
from imgflow.data.sources import open_source, sample_records
from imgflow.registry.gate import decide
from imgflow.serving.views import ModelView

CONFIG = DriftConfig()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, list[str]]:
    """1,000 real 28x28 digits of the bundled sample, shuffled, as pixels and label names."""
    records = sample_records(open_source("sample:mnist5k").records(), 1000)  # in source order: by class
    records = [records[i] for i in np.random.default_rng(0).permutation(len(records))]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(r.image)).convert("L")) for r in records])
    return pixels, [str(r.label) for r in records]


def _profile(pixels: np.ndarray, labels: list[str]) -> Profile:
    profile = Profile()
    for start in range(0, len(labels), 300):  # in batches, as a clean table is written
        column = pa.array([p.tobytes() for p in pixels[start : start + 300]], pa.binary())
        profile.add_pixels(pixel_array(column, (-1, 1)))
    profile.add_labels(Counter(labels))
    profile.add_sizes({"28x28": len(labels)})
    return profile


def _drifted(reference: Profile, new: Profile) -> set[str]:
    return {check.name for check in judge(profile_checks(reference, new, CONFIG), CONFIG) if check.drifted}


def test_a_profile_counts_every_record_and_a_union_is_the_sum_of_its_parts(digits, tmp_path: Path) -> None:
    pixels, labels = digits
    whole = _profile(pixels, labels)
    assert whole.records == 1000 and sum(whole.labels.values()) == 1000
    assert all(counts.sum() == 1000 for counts in whole.counts.values())
    assert set(whole.counts) == {"brightness", "contrast", "mean_gray", "longer_side"}
    union = _profile(pixels[:400], labels[:400])
    union.add(_profile(pixels[400:], labels[400:]))
    assert union.as_json() == whole.as_json()
    whole.write(tmp_path)
    assert read_profile(tmp_path / "profile.json").as_json() == whole.as_json()


def test_the_same_data_does_not_drift_but_inverted_or_darkened_images_do(digits) -> None:
    pixels, labels = digits
    reference = _profile(pixels[:700], labels[:700])
    assert _drifted(reference, _profile(pixels[700:], labels[700:])) == set()  # no false alarm
    assert {"brightness", "mean_gray"} <= _drifted(reference, _profile(255 - pixels[700:], labels[700:]))
    darker = (pixels[700:] * 0.4).astype(np.uint8)
    assert {"brightness", "contrast"} <= _drifted(reference, _profile(darker, labels[700:]))
    # One class more frequent than before: the labels drifted, the pixels' statistics did not.
    ones = [i for i, label in enumerate(labels[:700]) if label == "1"]
    skewed = np.concatenate([pixels[700:], pixels[ones]]), labels[700:] + ["1"] * len(ones)
    assert "labels" in _drifted(reference, _profile(*skewed))


def test_the_mmd_statistic_is_the_unbiased_estimate_and_its_test_sees_a_shift() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)), rng.normal(size=(30, 5)) + 0.8
    pooled = np.concatenate([x, y])
    squared = ((pooled[:, None] - pooled[None]) ** 2).sum(-1)
    kernel = np.exp(-squared / np.median(squared[np.triu_indices(70, 1)]))
    np.fill_diagonal(kernel, 0)
    direct = kernel[:40, :40].sum() / (40 * 39) + kernel[40:, 40:].sum() / (30 * 29) - 2 * kernel[:40, 40:].sum() / 1200
    size, p_value = mmd_test(x, y, permutations=500)
    assert size == pytest.approx(direct) and p_value < 0.01
    same, p_same = mmd_test(x, rng.normal(size=(30, 5)), permutations=500)
    assert p_same > 0.01 and same < size


def test_the_champion_falling_on_new_data_is_drift_that_matters() -> None:
    def view(right: int, of: int, shift: float = 0.0) -> ModelView:
        labels = np.arange(of) % 2
        predicted = np.where(np.arange(of) < right, labels, 1 - labels)
        embeddings = np.random.default_rng(of).normal(size=(of, 4)) + shift
        return ModelView(["a", "b"], embeddings, labels, predicted)

    reference = view(180, 200)
    same = judge(view_checks(reference, view(88, 100), CONFIG), CONFIG)
    assert not any(check.drifted for check in same)
    fallen = {check.name: check for check in judge(view_checks(reference, view(50, 100, shift=3.0), CONFIG), CONFIG)}
    assert fallen["champion_accuracy"].drifted and fallen["champion_accuracy"].size == pytest.approx(0.4)
    assert fallen["embeddings"].drifted


def test_the_gate_flags_drift_or_refuses_on_it_as_max_drift_says() -> None:
    drifted = {"partition 2024-05-03": ["brightness: Jensen-Shannon distance 1.000 > 0.15 (p = 1e-250)"]}
    flagged = decide(0.95, 0.94, GateConfig(min_accuracy=0.9), drifted=drifted)
    assert flagged.promote and "partition 2024-05-03 drifted from the champion's data, flagged" in flagged.reasons[-1]
    refused = decide(0.95, 0.94, GateConfig(min_accuracy=0.9, max_drift="refuse"), drifted=drifted)
    assert not refused.promote and "refused (max_drift = refuse): brightness" in refused.reasons[-1]
    assert decide(0.95, 0.94, GateConfig(min_accuracy=0.9, max_drift="refuse"), drifted={}).promote
